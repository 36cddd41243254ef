"""The `neuroscribe` command: thin wrappers, all logic lives in the library."""
