"""The key-value contract's conformance suite: folders that hold files (DVID key-value instances).

A test module provides a ``files_case`` fixture returning ``(store, folder, writable)``:
a KeyValueStore (raw or behind layers), the path of a folder that holds files
(empty at first, or holding only what earlier tests removed again), and whether
the store may be written. The tests make and remove their own files.
"""

from __future__ import annotations

import pytest

from ndfs.stores.base import KeyValueStore
from ndfs.core.errors import NotFound, ReadOnly


def test_a_file_written_is_read_listed_replaced_and_removed(files_case):
    store, folder, writable = files_case
    assert isinstance(store, KeyValueStore) and store.holds_files(folder)
    path = (*folder, "conformance-note.txt")
    if not writable:
        with pytest.raises(ReadOnly):
            store.write_file(path, b"x")
        return
    store.write_file(path, b"first \x00 bytes")
    try:
        assert store.is_file(path) and store.read_file(path) == b"first \x00 bytes"
        assert "conformance-note.txt" in store.children(folder)
        store.write_file(path, b"")
        assert store.read_file(path) == b""
    finally:
        store.delete_file(path)
    assert not store.is_file(path)
    with pytest.raises(NotFound):
        store.read_file(path)
    with pytest.raises(NotFound):
        store.delete_file(path)


def test_volumes_and_folders_are_not_files(files_case):
    store, folder, _ = files_case
    assert not store.is_file(folder)
    assert not store.is_file((*folder, "no-such-file"))
    with pytest.raises(NotFound):
        store.read_file((*folder, "no-such-file"))


__all__ = [name for name in dict(globals()) if name.startswith("test_")]
