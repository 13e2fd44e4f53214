"""The caching engine: the algorithm of a cache call written once, for both
doors (sync and async) and every backend (see ``docs/design.rst``).

- :mod:`~librecache.engine.judge`: the rules a value is judged by (no I/O);
- :mod:`~librecache.engine.flows`: the flows, generators that yield requests
  and return outcomes (no I/O);
- :mod:`~librecache.engine.doors`: the sync and async runners of a flow;
- :mod:`~librecache.engine.ports`: the I/O of a region for each door;
- :mod:`~librecache.engine.locks`: this process's queues, and the key that
  carries a lease through ``wrap=`` proxies.
"""
