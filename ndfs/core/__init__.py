"""The ground floor: errors, boxes and chunk grids, volume descriptions, locks, sizes, stamps,
downsampling rules, the configuration, and results in order with work ahead on threads (ahead). No I/O
but reading the configuration file; imports nothing of ndfs above it."""
