"""Every name Herald uses on a broker, derived from ``HERALD_BROKER_PREFIX`` (``herald``).

Tests give each run its own prefix, so runs on a shared broker never see each other.
"""

from __future__ import annotations

from dataclasses import dataclass

DEAD_REASON_HEADER = "x-herald-reason"


@dataclass(frozen=True)
class Names:
    prefix: str = "herald"

    # -- RabbitMQ -------------------------------------------------------------------------
    @property
    def exchange(self) -> str:
        """Durable topic exchange; routing key ``<tenant>.<event type>``."""
        return f"{self.prefix}.events"

    @property
    def dead_queue(self) -> str:
        """Messages Herald can never accept, with the reason in ``x-herald-reason``."""
        return f"{self.prefix}.events.dead"

    @property
    def unrouted(self) -> str:
        """Alternate exchange (and its queue): routing keys of tenants nobody consumes."""
        return f"{self.prefix}.events.unrouted"

    def tenant_queue(self, tenant: str) -> str:
        return f"{self.prefix}.ingest.{tenant}"

    @property
    def status_exchange(self) -> str:
        """Durable topic exchange of the status stream; routing key
        ``<tenant>.<channel>.<status>``."""
        return f"{self.prefix}.status"

    # -- NATS JetStream -------------------------------------------------------------------
    @property
    def stream(self) -> str:
        return f"{self.prefix}-events"

    @property
    def subjects(self) -> str:
        """The stream's subjects; one is ``<prefix>.events.<tenant>.<event type>``."""
        return f"{self.prefix}.events.>"

    def tenant_subjects(self, tenant: str) -> str:
        return f"{self.prefix}.events.{tenant}.>"

    def durable(self, tenant: str) -> str:
        return f"{self.prefix}-ingest-{tenant}"

    @property
    def dead_stream(self) -> str:
        return f"{self.prefix}-dead"

    @property
    def dead_subject(self) -> str:
        return f"{self.prefix}.events-dead"

    @property
    def status_stream(self) -> str:
        return f"{self.prefix}-status"

    def status_subject(self, routing_key: str) -> str:
        """``<prefix>.status.<tenant>.<channel>.<status>``."""
        return f"{self.prefix}.status.{routing_key}"

    def subject_address(self, subject: str) -> str:
        """``<tenant>.<event type>``, the routing-key form, from a subject of the stream."""
        return subject.removeprefix(f"{self.prefix}.events.")


def split_address(address: str) -> tuple[str, str | None]:
    """``(tenant, event type)`` from ``<tenant>.<event type>``; the type may be absent."""
    tenant, _, event_type = address.partition(".")
    return tenant, event_type or None
