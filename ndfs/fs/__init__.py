"""The file-system view: the path tree (pure Python) and the FUSE skin over it."""
