"""The analytics dashboard: one static page that reads the JSON API with the user's key.

The page itself needs no key: it asks for one, keeps it in the tab's sessionStorage and
sends it as a bearer header, so the key never appears in a URL or a server log. Static
files are served from the package (the machines are offline: no CDN), by a fixed list,
so no request path can reach any other file.
"""

from __future__ import annotations

import html
from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import FileResponse, HTMLResponse

from api.deps import SettingsDep

router = APIRouter(tags=["dashboard"], include_in_schema=False)

STATIC = Path(__file__).resolve().parent.parent / "static"
_JS = "text/javascript; charset=utf-8"
FILES: dict[str, tuple[Path, str]] = {
    "dashboard.js": (STATIC / "dashboard" / "dashboard.js", _JS),
    "dashboard.css": (STATIC / "dashboard" / "dashboard.css", "text/css; charset=utf-8"),
    "vendor/chart.umd.min.js": (STATIC / "vendor" / "chart.umd.min.js", _JS),
}
# Everything the page loads comes from here; the only outward links are to the Temporal UI.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


@lru_cache(maxsize=1)
def _template() -> str:
    return (STATIC / "dashboard" / "index.html").read_text(encoding="utf-8")


def render_page(temporal_ui: str, namespace: str) -> str:
    """The page with the Temporal UI base and namespace its workflow links use."""
    return (
        _template()
        .replace("__HERALD_TEMPORAL_UI__", html.escape(temporal_ui, quote=True))
        .replace("__HERALD_TEMPORAL_NAMESPACE__", html.escape(namespace, quote=True))
    )


@router.get("/dashboard", response_class=HTMLResponse)
def dashboard(settings: SettingsDep) -> HTMLResponse:
    page = render_page(settings.temporal_ui_base, settings.temporal_namespace)
    return HTMLResponse(page, headers={**SECURITY_HEADERS, "Cache-Control": "no-store"})


@router.get("/dashboard/static/{path:path}")
def static_file(path: str) -> FileResponse:
    found = FILES.get(path)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "not found")
    file, media_type = found
    return FileResponse(
        file,
        media_type=media_type,
        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
    )
