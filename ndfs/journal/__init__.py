"""The write journal: every committed write is one durable entry, applied whole or replayed.

:mod:`ndfs.journal.entries` keeps entries on disk; the local store applies its
own journal (:mod:`ndfs.backends.local`); :mod:`ndfs.journal.store` is the
outbox of remote services, the same journal as a layer over their backends.
"""

from ndfs.journal.entries import Entry, Journal

__all__ = ["Entry", "Journal"]
