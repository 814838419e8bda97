"""Temporal activities: the only code that talks to providers and the database for a send."""
