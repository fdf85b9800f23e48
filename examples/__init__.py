"""Example worker systems; each runs with ``python -m examples.<name>``."""
