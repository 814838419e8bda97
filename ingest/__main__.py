"""``python -m ingest``: the broker consumer on its own, to scale apart from the API."""

from __future__ import annotations

import asyncio
import logging

from aiormq.exceptions import AMQPConnectionError
from nats.errors import NoServersError

from core.settings import get_settings
from core.telemetry import configure_logging
from core.temporal import exit_process
from ingest.app import ConfigError, IngestService

log = logging.getLogger("herald.ingest")


def main() -> int:
    settings = get_settings()
    configure_logging(settings)
    try:
        service = IngestService(settings)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    try:
        asyncio.run(service.app.run())
    except (AMQPConnectionError, NoServersError, OSError) as exc:
        log.error("cannot reach the broker at %s: %s", settings.broker_address, exc)
        return 1
    return 0


if __name__ == "__main__":
    exit_process(main())
