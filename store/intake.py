"""Many events in one transaction: the group commit of the broker consumer and of the API.

SQLite takes one write at a time, so a transaction per message made the consumer queue
on the write lock (about 3 ms each, whatever the concurrency). Each event still gets a
savepoint of its own when one is refused (an unknown subscriber, a key reused with another
body, a bad value): it rolls back alone, and the others commit together.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine

from core.limits import WorkflowInputTooLargeError
from store.db import session_scope
from store.events import (
    AcceptedEvent,
    IdempotencyConflictError,
    Lookups,
    RecipientSpec,
    UnknownSubscribersError,
    _insert,
    _load_by_key,
    accept_event,
    counted,
    used_keys,
)
from store.fanout import PendingRows


@dataclass(frozen=True)
class AcceptRequest:
    """``accept_event``'s arguments for one event."""

    type: str
    data: dict[str, Any]
    actor: str | None
    recipients: list[RecipientSpec]
    idempotency_key: str | None
    request_fingerprint: str
    cancellation_key: str | None = None

    def accept_alone(self, engine: Engine, tenant_id: str) -> AcceptedEvent:
        return accept_event(
            engine,
            tenant_id,
            type=self.type,
            data=self.data,
            actor=self.actor,
            recipients=self.recipients,
            idempotency_key=self.idempotency_key,
            request_fingerprint=self.request_fingerprint,
            cancellation_key=self.cancellation_key,
        )


def accept_many(
    engine: Engine, tenant_id: str, requests: list[AcceptRequest]
) -> list[AcceptedEvent | Exception]:
    """Each request's event (or why it was refused), in order, committed together.

    A key another process stored while this transaction ran is read back after the
    commit, as ``accept_event`` does. A database that is down raises for the whole batch.
    The batch is first tried without savepoints (they cost about a twentieth of the
    consumer's CPU) and with its rows written together at the end; the first refusal rolls
    it back and it is redone with a savepoint and immediate writes per event.
    """
    try:
        results = _accept_batch(engine, tenant_id, requests, isolate=False)
    except _Refused:
        results = _accept_batch(engine, tenant_id, requests, isolate=True)
    return [
        r.accept_alone(engine, tenant_id)
        if res is None
        else counted(res)
        if isinstance(res, AcceptedEvent)
        else res
        for r, res in zip(requests, results, strict=True)
    ]


class _Refused(Exception):
    """An event of a batch tried without savepoints was refused: redo it with them."""


def _accept_batch(
    engine: Engine, tenant_id: str, requests: list[AcceptRequest], isolate: bool
) -> list[AcceptedEvent | Exception | None]:
    """None for an event that raced with another process on its key (read back later)."""
    results: list[AcceptedEvent | Exception | None] = []
    with session_scope(engine) as session:
        lookups = Lookups()
        pending = None if isolate else PendingRows()
        used = used_keys(
            session, tenant_id, [r.idempotency_key for r in requests if r.idempotency_key]
        )
        for r in requests:
            try:
                with session.begin_nested() if isolate else nullcontext():
                    if pending is not None and r.idempotency_key in used:
                        pending.flush(session)  # the key may be an earlier event's of the batch
                    prior = (
                        _load_by_key(session, tenant_id, r.idempotency_key, r.request_fingerprint)
                        if r.idempotency_key in used
                        else None
                    )
                    results.append(
                        prior
                        or _insert(
                            session,
                            tenant_id,
                            r.type,
                            r.data,
                            r.actor,
                            r.recipients,
                            r.idempotency_key,
                            r.request_fingerprint,
                            r.cancellation_key,
                            lookups,
                            pending,
                        )
                    )
                    if r.idempotency_key:
                        used.add(r.idempotency_key)  # a repeat later in the batch is a duplicate
            except (
                UnknownSubscribersError,
                IdempotencyConflictError,
                WorkflowInputTooLargeError,
            ) as exc:
                if not isolate:
                    raise _Refused from exc
                lookups.known.clear()  # what its savepoint upserted is gone again
                results.append(exc)
            except sa_exc.IntegrityError as exc:
                if not isolate:
                    raise _Refused from exc
                lookups.known.clear()
                results.append(None)  # raced with another process: read back below
            except (sa_exc.OperationalError, sa_exc.InterfaceError):
                raise  # the database, not this event: the whole batch waits
            except sa_exc.SQLAlchemyError as exc:
                if not isolate:
                    raise _Refused from exc
                lookups.known.clear()
                results.append(exc)  # this event's values (e.g. too long for a column)
        if pending is not None:
            try:
                pending.flush(session)
            except (sa_exc.OperationalError, sa_exc.InterfaceError):
                raise
            except sa_exc.SQLAlchemyError as exc:
                raise _Refused from exc  # one event's rows: find which, with savepoints
    return results
