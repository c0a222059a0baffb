"""RAMON (Reusable Annotation Markup for Open coNnectomes): objects, validation, conversions.

One class per RAMON type (``specs/ramon.md``), each with every field of the
spec: ``RamonGeneric``, ``RamonSynapse``, ``RamonSeed``, ``RamonSegment``,
``RamonNeuron``, ``RamonOrganelle``, ``RamonAttributedRegion``,
``RamonVolume``, ``RamonNode``, ``RamonSkeleton`` and ``RamonROI``::

    from ndfs import ramon

    seg = ramon.RamonSegment(author="alice", segmentclass="soma", kvpairs={"class": "cell"}).validate()
    text = seg.to_json()                      # the ndfs file form (ramon/<id>.json)
    same = ramon.from_json(text)              # == seg
    blob = ramon.to_hdf5([seg], layout="legacy")   # a NeuroData RAMON POST body

Conversions: the ndfs file form (:func:`to_json`, :func:`from_json`,
:func:`to_dict`, :func:`from_dict`), NeuroData's legacy JSON layouts A and B
(:func:`to_legacy`, :func:`to_flat`, :func:`from_legacy`) and HDF5 in the
legacy wire layout or ndfs's clean layout (:func:`to_hdf5`, :func:`from_hdf5`).
Bad input raises :class:`ndfs.errors.InvalidAnnotation` (EINVAL).
"""

from ndfs.ramon.query import Filters, check_ids, check_objects, query_filters
from ndfs.ramon.hdf5io import from_hdf5, ids_hdf5, read_ids_hdf5, to_hdf5
from ndfs.ramon.jsonio import (
    bbox_from_dict, check_field, from_dict, from_flat, from_json, from_legacy, to_dict, to_flat, to_json, to_legacy,
)
from ndfs.ramon.types import (
    CAJAL_TYPES, CLASSES, ENUMS, FIELDS, MAX_ID, MAX_UINT32, NDSTORE_TYPES, NOT_STORED, OWN_VOXELS, TYPES,
    RamonAttributedRegion, RamonGeneric, RamonNeuron, RamonNode, RamonObject, RamonOrganelle, RamonROI, RamonSeed,
    RamonSegment, RamonSkeleton, RamonSynapse, RamonVolume, Voxels, enum_value, make, type_name,
)

from ndfs.core.errors import InvalidAnnotation  # noqa: E402

__all__ = [
    "RamonObject", "RamonGeneric", "RamonSynapse", "RamonSeed", "RamonSegment", "RamonNeuron", "RamonOrganelle",
    "RamonAttributedRegion", "RamonVolume", "RamonNode", "RamonSkeleton", "RamonROI", "Voxels",
    "TYPES", "FIELDS", "ENUMS", "CLASSES", "CAJAL_TYPES", "NDSTORE_TYPES", "OWN_VOXELS", "NOT_STORED",
    "MAX_ID", "MAX_UINT32", "make", "type_name", "enum_value", "to_json", "from_json", "to_dict", "from_dict",
    "bbox_from_dict", "check_field", "to_legacy", "to_flat", "from_legacy", "from_flat", "to_hdf5", "from_hdf5",
    "ids_hdf5", "read_ids_hdf5", "InvalidAnnotation", "Filters", "query_filters", "check_ids", "check_objects",
]
