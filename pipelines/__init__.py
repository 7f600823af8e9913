"""The Ray wiring and command-line entry points of curate: build_shards, demo, the phase drivers and Ray glue."""
