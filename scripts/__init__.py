"""Developer scripts (``scripts/run.py`` is what ``make run`` executes)."""
