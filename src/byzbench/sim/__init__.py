"""The simulation engine."""
