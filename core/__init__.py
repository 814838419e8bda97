"""Settings and types shared by the API, the worker and the channel adapters."""
