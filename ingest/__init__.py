"""Event ingestion from a message broker: ``python -m ingest``.

Each message goes through the same accept path as ``POST /v1/events`` (validation,
idempotency, the event store, the dispatch outbox) and is acknowledged only once its
event is committed. See ``ingest.app`` for the process and the README for the contract.
"""
