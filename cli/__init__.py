"""The `pimesh` command: operators' tools and the entry points of every component."""
