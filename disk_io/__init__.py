"""vigil disk_io package."""
