"""What the OpenAPI fuzz pass found, pinned as plain cases: each was a 500 or a silent
coercion before, and a regression here would first show as a failure of the fuzz test."""

from __future__ import annotations

import pytest

from tests.conftest import Herald, HeraldFactory


@pytest.fixture
async def api_only(herald_factory: HeraldFactory) -> Herald:
    return await herald_factory(queues=())


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        # PostgreSQL text cannot hold U+0000: a 422, never a 500 from the driver.
        ("/v1/subscribers/ada", {"name": "Ada\x00"}, "name"),
        # "$" in a pattern lets a trailing newline by; the fields are matched whole.
        ("/v1/subscribers/ada", {"phone": "+14155550100\n"}, "phone"),
        ("/v1/subscribers/ada", {"locale": "en\n"}, "locale"),
        # \d takes any script's digits: Arabic-Indic ones are not an E.164 number.
        ("/v1/subscribers/ada", {"phone": "+1٤١٥٥٥٥٠١٠٠"}, "phone"),
    ],
)
async def test_text_the_schema_refuses_is_a_422_naming_the_field(
    api_only: Herald, path: str, body: dict[str, object], field: str
) -> None:
    response = await api_only.http.put(path, json=body)
    assert response.status_code == 422, response.text
    assert [e["loc"][-1] for e in response.json()["detail"]] == [field]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"limit": True}, "limit"),  # lax mode read true as 1
        ({"limit": "5"}, "limit"),  # and "5" as 5, where the document says integer
        ({"since": 0.5}, "since"),  # a number was a time in 1970
        ({"since": "2026-11-24T09:00:00"}, "since"),  # no offset: the database refused it
    ],
)
async def test_numbers_and_times_are_json_types_not_coerced(
    api_only: Herald, body: dict[str, object], field: str
) -> None:
    response = await api_only.http.post("/v1/deliveries/retry", json=body)
    assert response.status_code == 422, response.text
    assert [e["loc"][-1] for e in response.json()["detail"]] == [field]


async def test_an_aware_time_and_a_whole_number_are_taken(api_only: Herald) -> None:
    response = await api_only.http.post(
        "/v1/deliveries/retry", json={"since": "2026-11-24T09:00:00Z", "limit": 5.0}
    )
    assert response.status_code == 202, response.text
    assert response.json() == {"notifications": []}


async def test_a_concrete_path_is_not_an_id_of_the_templated_one(api_only: Herald) -> None:
    # /v1/events/replay is its own resource (POST); it is not "event 'replay' not found".
    response = await api_only.http.get("/v1/events/replay")
    assert response.status_code == 405, response.text
    assert "POST" in response.headers["allow"].split(", ")


async def test_a_405_names_every_method_of_the_path(api_only: Herald) -> None:
    # GET, PUT and DELETE on a subscriber are separate routes; Starlette named only the first.
    response = await api_only.http.patch("/v1/subscribers/ada", json={})
    assert response.status_code == 405, response.text
    assert {"GET", "PUT", "DELETE"} <= set(response.headers["allow"].split(", "))


async def test_a_retry_while_temporal_is_unreachable_is_a_503(
    herald_without_temporal: Herald,
) -> None:
    herald = herald_without_temporal
    assert (await herald.http.put("/v1/subscribers/ada", json={})).status_code == 200
    flow = {"event_type": "t.down", "steps": [{"channel": "webhook", "url": "http://127.0.0.1/"}]}
    assert (await herald.http.put("/v1/flows/down", json=flow)).status_code == 200
    event = await herald.http.post("/v1/events", json={"type": "t.down", "to": ["ada"]})
    assert event.status_code in (202, 503), event.text  # stored either way, for the sweep
    body = event.json()
    event_id = body["id"] if event.status_code == 202 else body["detail"]["event_id"]
    (notification,) = (await herald.http.get(f"/v1/events/{event_id}")).json()["notifications"]
    response = await herald.http.post(f"/v1/notifications/{notification['id']}/retry")
    assert response.status_code == 503, response.text  # was a 500
    assert "unreachable" in response.text
