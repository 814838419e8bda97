"""Temporal workflows. Kept free of I/O: everything that touches the world is an activity.

Changing a workflow safely: executions started by the old code are still running (delays,
seven-day dead letters, digests) and will be replayed by the new code. Any change to the
commands a workflow issues (activities, timers, signals waited on, search-attribute
upserts, child workflows), or to their order, goes behind ``workflow.patched("<name>")``
with the old path kept in the ``else`` branch. Once a change is in, record new histories
(``HERALD_RECORD_HISTORIES=<commit> pytest tests/workflows tests/api/test_broadcasts.py``,
see tests/histories) and keep the old folders: tests/workflows/test_history_replay.py
replays all of them, so a change that would break a running execution fails CI. Remove an
old branch (``workflow.deprecate_patch``) only after no execution of that age can exist.
"""
