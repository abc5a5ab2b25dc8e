"""vigil policies package."""
