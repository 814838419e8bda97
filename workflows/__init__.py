"""Temporal workflows. Kept free of I/O: everything that touches the world is an activity."""
