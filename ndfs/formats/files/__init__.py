"""Volume files, one module per format (tif, npy, npz, h5, png), each a reader and a streaming writer.

:mod:`ndfs.formats.registry` puts them in one table; use that, not these modules, to read or write
a file by format name. :mod:`.base` holds what they share.
"""
