"""`make bench`: Herald against the raw Temporal ceiling, measured in one run."""
