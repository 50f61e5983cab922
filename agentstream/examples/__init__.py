"""Sample agents and tools (the demo)."""
