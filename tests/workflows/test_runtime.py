from __future__ import annotations

import pytest

from workflows.runtime import ALL_QUEUES, parse_queues


def test_parse_queues() -> None:
    assert parse_queues(None) == list(ALL_QUEUES)
    assert parse_queues("email, sms,email") == ["email", "sms"]
    with pytest.raises(ValueError, match="fax"):
        parse_queues("email,fax")
    with pytest.raises(ValueError):
        parse_queues(" , ")
