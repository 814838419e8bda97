"""The ``herald`` command line: operator tasks (keys; later migrate, doctor, send, ...)."""
