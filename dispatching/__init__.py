"""Starting accepted events' workflows on Temporal: shared by the API and the broker consumer."""
