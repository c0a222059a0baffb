"""Protocol servers: serve any ndfs Backend over a datastore's real HTTP protocol (``ndfs serve``).

:mod:`ndfs.serve.common` runs a WSGI app on a threaded server (waitress) with
optional latency, bandwidth and fault injection and a request counter;
:mod:`ndfs.serve.boss` is the BOSS API v1 app. Nothing is imported here, so
``import ndfs.serve`` stays cheap; the servers need the ``serve`` extra.
"""
