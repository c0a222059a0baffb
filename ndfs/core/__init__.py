"""The ground floor: errors, boxes and chunk grids, volume descriptions, locks, sizes, stamps,
downsampling rules and the configuration. No I/O but reading the configuration file; imports nothing
of ndfs above it."""
