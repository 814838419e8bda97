"""Send many messages through one provider: its batch API if it has one, else a bounded pool.

Outcomes come back one per message, in order. A ``TransientProviderError`` outcome means
"not sent, worth retrying"; the call raises one only when nothing at all went out, so the
caller's retry can never repeat a message that was sent.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from channels.base import (
    BatchAdapter,
    ChannelAdapter,
    Message,
    Outcome,
    ProviderError,
    TransientProviderError,
)


def send_all(
    adapter: ChannelAdapter,
    messages: Sequence[Message],
    *,
    concurrency: int,
    before_each: Callable[[], object] | None = None,
) -> list[Outcome]:
    """One outcome per message, in order; raises TransientProviderError if every one is.

    Batch adapters get chunks of ``max_batch`` (``before_each`` is not called: the batch
    API is its own pacing); others get one ``send`` per message, ``concurrency`` at once,
    each preceded by ``before_each()`` (the caller's rate-limit pacer).
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    if not messages:
        return []
    if isinstance(adapter, BatchAdapter):
        return settle(_in_chunks(adapter, messages))
    return settle(_pooled(adapter, messages, concurrency, before_each))


def settle(outcomes: list[Outcome]) -> list[Outcome]:
    """The outcomes, unless all are transient: then nothing went out, so raise to retry."""
    if not outcomes or not all(isinstance(o, TransientProviderError) for o in outcomes):
        return outcomes
    # The one asking for the longest wait, so the retry does not come back too soon.
    errors = [o for o in outcomes if isinstance(o, TransientProviderError)]
    raise max(errors, key=lambda e: e.retry_after if e.retry_after is not None else -1.0)


def _in_chunks(adapter: BatchAdapter, messages: Sequence[Message]) -> list[Outcome]:
    size = max(1, adapter.max_batch)
    outcomes: list[Outcome] = []
    for start in range(0, len(messages), size):
        chunk = messages[start : start + size]
        try:
            results = adapter.send_batch(chunk)
        except TransientProviderError as exc:
            # Earlier chunks went out: keep their outcomes and stop here (the provider is
            # down or asks us to slow down); the rest are "not sent, retry".
            outcomes.extend(exc for _ in range(len(messages) - start))
            break
        if len(results) != len(chunk):
            raise RuntimeError(
                f"{adapter.provider}.send_batch returned {len(results)} outcomes "
                f"for {len(chunk)} messages"
            )
        outcomes.extend(results)
    return outcomes


def _pooled(
    adapter: ChannelAdapter,
    messages: Sequence[Message],
    concurrency: int,
    before_each: Callable[[], object] | None,
) -> list[Outcome]:
    def one(message: Message) -> Outcome:
        if before_each is not None:
            before_each()
        try:
            return adapter.send(message)
        except ProviderError as exc:
            return exc

    workers = min(concurrency, len(messages))
    with ThreadPoolExecutor(workers, thread_name_prefix=f"send-{adapter.provider}") as pool:
        futures = [pool.submit(one, message) for message in messages]
        try:
            return [future.result() for future in futures]
        except BaseException:
            # A bug, or a pacer that gave up (cancellation): send nothing more.
            pool.shutdown(wait=False, cancel_futures=True)
            raise
