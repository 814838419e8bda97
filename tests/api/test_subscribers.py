from __future__ import annotations

from tests.conftest import Herald, unique


async def test_put_and_get_subscriber_merges_fields(herald: Herald) -> None:
    sid = unique("u")
    first = await herald.put_subscriber(
        sid,
        email="ada@example.com",
        phone="+447700900123",
        timezone="Europe/London",
        push_tokens=["t1", "t1", "t2"],
        data={"plan": "pro"},
    )
    assert first["locale"] == "en"
    assert first["push_tokens"] == ["t1", "t2"]
    second = await herald.put_subscriber(sid, name="Ada")
    assert second["email"] == "ada@example.com"
    assert second["name"] == "Ada"
    cleared = await herald.put_subscriber(sid, phone=None)
    assert cleared["phone"] is None
    got = (await herald.http.get(f"/v1/subscribers/{sid}")).json()
    assert got == cleared
    assert got["created_at"].endswith(("+00:00", "Z"))


async def test_bad_subscriber_fields_are_422_naming_each_field(herald: Herald) -> None:
    sid = unique("u")
    bad = {
        "email": "nope",
        "phone": "4155550100",
        "timezone": "Mars/Olympus",
        "webhook_url": "ftp://example.com/x",
        "locale": "english!",
    }
    r = await herald.http.put(f"/v1/subscribers/{sid}", json=bad)
    assert r.status_code == 422
    named = {e["loc"][-1] for e in r.json()["detail"]}
    assert named == set(bad)
    assert (await herald.http.get(f"/v1/subscribers/{sid}")).status_code == 404


async def test_preferences_round_trip_and_validation(herald: Herald) -> None:
    sid = unique("u")
    await herald.put_subscriber(sid, email="a@example.com")
    empty = (await herald.http.get(f"/v1/subscribers/{sid}/preferences")).json()
    assert empty["channels"] == {} and empty["flows"] == {}
    prefs = {
        "channels": {"sms": False},
        "categories": {"marketing": False, "digest": {"email": True, "push": False}},
        "flows": {"weekly": {"email": False}},
    }
    r = await herald.http.put(f"/v1/subscribers/{sid}/preferences", json=prefs)
    assert r.status_code == 200, r.text
    got = (await herald.http.get(f"/v1/subscribers/{sid}/preferences")).json()
    assert {k: got[k] for k in prefs} == prefs

    bad = await herald.http.put(
        f"/v1/subscribers/{sid}/preferences", json={"channels": {"fax": True}}
    )
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"][:2] == ["body", "channels"]
    missing = await herald.http.put("/v1/subscribers/ghost/preferences", json={})
    assert missing.status_code == 404
