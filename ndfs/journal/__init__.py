"""The write journal: every committed write is one durable entry, applied whole or replayed.

:mod:`ndfs.stores.journal` keeps entries on disk; the local store applies its
own journal (:mod:`ndfs.stores.local`); :mod:`ndfs.journal.outbox` is the
outbox of remote services, the same journal as a layer over their backends.
"""

from ndfs.stores.journal import Entry, Journal

__all__ = ["Entry", "Journal"]
