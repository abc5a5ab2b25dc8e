"""vigil repository package."""
