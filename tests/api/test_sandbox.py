from __future__ import annotations

from tests.conftest import Herald, unique


async def test_unconfigured_channels_deliver_to_the_sandbox(sandbox_herald: Herald) -> None:
    herald = sandbox_herald
    sub = unique("u")
    await herald.put_subscriber(
        sub, email="ada@example.com", phone="+14155550100", push_tokens=["tok"], name="Ada"
    )
    await herald.put_flow(
        "welcome",
        event_type="user.signup",
        steps=[
            {"channel": "email", "subject": "Welcome {{ subscriber.name }}", "text": "Hi"},
            {"channel": "sms", "text": "Hi {{ subscriber.name }}"},
            {"channel": "push", "title": "Hi", "body": "{{ data.plan }}"},
        ],
    )
    event = await herald.wait_event(
        (await herald.publish(type="user.signup", to=[sub], data={"plan": "pro"}))["id"]
    )
    deliveries = event["notifications"][0]["deliveries"]
    assert {d["provider"] for d in deliveries} == {"sandbox"}
    assert {d["status"] for d in deliveries} == {"sent"}

    items = (await herald.http.get("/v1/sandbox/messages")).json()["items"]
    by_channel = {m["channel"]: m for m in items}
    assert by_channel["email"]["to"] == ["ada@example.com"]
    assert by_channel["email"]["content"]["subject"] == "Welcome Ada"
    assert by_channel["sms"]["content"] == {"text": "Hi Ada"}
    assert by_channel["push"]["to"] == ["tok"]
    assert by_channel["push"]["content"]["body"] == "pro"
    only_sms = (await herald.http.get("/v1/sandbox/messages?channel=sms")).json()["items"]
    assert [m["channel"] for m in only_sms] == ["sms"]
    assert (await herald.http.get("/v1/sandbox/messages?channel=fax")).status_code == 422
