"""vigil protector package."""
