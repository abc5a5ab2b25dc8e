"""vigil watcher package."""
