"""The ``ndfs`` command line: one module per group of commands (``commands``: demo, mount, umount, ls,
cat, info, cache, outbox; ``convert``: export, import; ``annotate``: count, annotate; ``serve``; ``copy``).
Errors print one line ``ndfs: error: ...``."""

from ndfs.cli.commands import main

__all__ = ["main"]
