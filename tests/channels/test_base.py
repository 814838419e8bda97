from __future__ import annotations

import time
from email.utils import formatdate

import pytest

from channels.base import (
    EmailContent,
    Message,
    PermanentProviderError,
    SmsContent,
    parse_retry_after,
    unpack,
)
from core.types import Channel


def _msg(to: tuple[str, ...], content: object) -> Message:
    return Message(
        delivery_id="dlv_1",
        tenant_id="t",
        channel=Channel.EMAIL,
        to=to,
        content=content,  # type: ignore[arg-type]
    )


def test_unpack_returns_the_expected_content() -> None:
    content = EmailContent(subject="s", text="t")
    assert unpack(_msg(("a@b.co",), content), EmailContent, provider="p") is content
    assert unpack(_msg(("x", "y"), content), EmailContent, provider="p", one_recipient=False)


def test_unpack_refuses_wrong_shape_and_recipient_count_permanently() -> None:
    with pytest.raises(PermanentProviderError) as wrong:
        unpack(_msg(("a@b.co",), SmsContent(text="t")), EmailContent, provider="p")
    assert wrong.value.code == "bad_content"
    with pytest.raises(PermanentProviderError) as many:
        unpack(_msg(("a", "b"), EmailContent(subject="s", text="t")), EmailContent, provider="p")
    assert many.value.code == "bad_recipient"


def test_parse_retry_after_seconds_and_http_dates() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    later = parse_retry_after(formatdate(time.time() + 30, usegmt=True))
    assert later is not None and 25 <= later <= 30
