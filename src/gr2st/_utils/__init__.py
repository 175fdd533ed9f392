"""Internal helpers shared across pipeline steps."""
