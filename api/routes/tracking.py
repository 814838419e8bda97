"""Herald's own open pixel, click links and RFC 8058 one-click unsubscribe.

No API key: mail clients, browsers and mailbox providers call these. Tokens are signed
(``core.tracking``), so a forged one costs no database work. Opens and clicks are queued
for ``api.recorder``, which writes them in batches off the request path and then signals
waiting workflows: neither the write lock nor Temporal slows a pixel or a redirect down.
The unsubscribe POST is recorded in the request: a person waits for its confirmation.

- ``GET /t/o/{token}.gif``: the open pixel; ``GET /t/o/{token}`` is the same for apps.
- ``GET /t/c/{token}``: a click, answered with 302 to the stored URL.
- ``GET /u/{token}``: a confirmation page; ``POST /u/{token}``: unsubscribe (one-click).
"""

from __future__ import annotations

import base64
import html
import logging
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Depends, HTTPException, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.engine import Engine

from api.deps import EngineDep, GatewayDep, SettingsDep
from api.engagement import signal_reached
from api.recorder import ObservationRecorder
from core.lifecycle import Kind, Observation, Source
from core.settings import Settings
from core.tracking import Signer, TokenKind
from dispatching.temporal import TemporalGateway
from store.lifecycle import record_batch
from store.tracking_links import find_link, unsubscribe_category

log = logging.getLogger(__name__)
router = APIRouter(tags=["tracking"], include_in_schema=False)

# A 1x1 transparent GIF (43 bytes).
GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
NO_CACHE = {
    "Cache-Control": "no-cache, no-store, must-revalidate, private",
    "Pragma": "no-cache",
    "Expires": "0",
}
# The tokens are in the URL: keep them out of referrers and search indexes.
PRIVATE = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer", "X-Robots-Tag": "noindex"}


async def _recorder(request: Request) -> ObservationRecorder:
    recorder: ObservationRecorder = request.app.state.recorder
    return recorder


RecorderDep = Annotated[ObservationRecorder, Depends(_recorder)]


def _verify(settings: Settings, kind: TokenKind, token: str) -> str | None:
    return Signer(settings.tracking_secret.get_secret_value()).verify(kind, token)


async def _record(
    engine: Engine, gateway: TemporalGateway, tasks: BackgroundTasks, obs: Observation
) -> bool:
    """Store the observation and wake waiting workflows after the response; False if unknown."""
    recorded = await run_in_threadpool(record_batch, engine, [obs])
    tasks.add_task(signal_reached, gateway, recorded.reached)
    return not recorded.unknown


@router.get("/t/o/{token}")
async def open_pixel(token: str, settings: SettingsDep, recorder: RecorderDep) -> Response:
    """Always the GIF, whatever the token: a broken image helps nobody."""
    pixel = token.endswith(".gif")
    delivery_id = _verify(settings, TokenKind.OPEN, token.removesuffix(".gif"))
    if delivery_id is not None:
        # The pixel in an email, or the bare link a push app reports its open with.
        obs = Observation(Kind.OPENED, Source.PIXEL if pixel else Source.APP, delivery_id)
        try:
            await recorder.submit(obs)
        except Exception:  # only when the queue was full and the database failed too
            log.exception("could not record the open of delivery %s", delivery_id)
    return Response(GIF, media_type="image/gif", headers=NO_CACHE)


@router.get("/t/c/{token}")
async def click(
    token: str, settings: SettingsDep, engine: EngineDep, recorder: RecorderDep
) -> RedirectResponse:
    """302 to the URL stored for the link, never to anything the request carries."""
    link_id = _verify(settings, TokenKind.CLICK, token)
    if link_id is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "unknown link")
    link = await run_in_threadpool(find_link, engine, link_id)  # a read: no write lock
    if link is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "unknown link")
    obs = Observation(
        Kind.CLICKED, Source.LINK, link.delivery_id, tenant_id=link.tenant_id, url=link.url
    )
    try:
        await recorder.submit(obs)
    except Exception:
        # Only when the queue was full and the database failed too: the reader still gets
        # where they were going.
        log.exception("could not record a click on delivery %s", link.delivery_id)
    return RedirectResponse(link.url, status.HTTP_302_FOUND, headers=PRIVATE)


@router.get("/u/{token}")
async def unsubscribe_page(token: str, settings: SettingsDep, engine: EngineDep) -> HTMLResponse:
    """A page with a button: mail scanners fetch links, so a GET never unsubscribes."""
    delivery_id = _verify(settings, TokenKind.UNSUBSCRIBE, token)
    category = None
    if delivery_id is not None:
        category = await run_in_threadpool(unsubscribe_category, engine, delivery_id)
    if category is None:
        return _not_found()
    return _page(
        "Unsubscribe",
        f"<p>Stop receiving <strong>{html.escape(category)}</strong> emails?</p>"
        '<form method="post">'
        '<input type="hidden" name="List-Unsubscribe" value="One-Click">'
        '<button type="submit">Unsubscribe</button>'
        "</form>",
    )


@router.post("/u/{token}")
async def unsubscribe(
    token: str,
    settings: SettingsDep,
    engine: EngineDep,
    gateway: GatewayDep,
    tasks: BackgroundTasks,
) -> HTMLResponse:
    """RFC 8058 one-click (``List-Unsubscribe=One-Click``) and the page's button alike."""
    delivery_id = _verify(settings, TokenKind.UNSUBSCRIBE, token)
    if delivery_id is None:
        return _not_found()
    obs = Observation(Kind.UNSUBSCRIBED, Source.UNSUBSCRIBE, delivery_id)
    if not await _record(engine, gateway, tasks, obs):
        return _not_found()
    return _page("Unsubscribed", "<p>You have been unsubscribed.</p>")


def _page(title: str, body: str, code: int = status.HTTP_200_OK) -> HTMLResponse:
    content = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{title}</title></head>"
        '<body style="font-family:sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem">'
        f"<h1>{title}</h1>{body}</body></html>"
    )
    return HTMLResponse(content, code, headers=PRIVATE)


def _not_found() -> HTMLResponse:
    return _page(
        "Link not valid",
        "<p>This unsubscribe link is not valid.</p>",
        status.HTTP_404_NOT_FOUND,
    )
