"""Signed tracking tokens and the rewriting of links in rendered messages (pure, no I/O).

A token is ``{payload}.{mac}``: the MAC is HMAC-SHA256 over the kind and the payload,
truncated to 12 bytes and base64url-encoded, so an open token never passes as a click or
an unsubscribe token. Click payloads are link ids derived from the delivery, the link's
position and its URL, so a retried render produces the same ids (and the same rows).
"""

from __future__ import annotations

import base64
import functools
import hmac
import html
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from html.parser import HTMLParser

MAC_BYTES = 12
LINK_ID_BYTES = 12
# A payload sent as is; anything else is base64url-encoded behind this marker.
_PLAIN = re.compile(r"[A-Za-z0-9_-]{1,128}")
_ENCODED = "~"
_B64 = re.compile(r"[A-Za-z0-9_-]+")
_MAX_TOKEN = 512
# Longer URLs are left as they are: the stored copy would not fit its column.
MAX_URL = 4096


class TokenKind(StrEnum):
    OPEN = "open"
    CLICK = "click"
    UNSUBSCRIBE = "unsubscribe"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Signer:
    """Signs and verifies tokens with the tracking secret, one domain per token kind."""

    def __init__(self, secret: str | bytes) -> None:
        self._key = secret.encode() if isinstance(secret, str) else secret
        if not self._key:
            raise ValueError("the tracking secret must not be empty")

    def _mac(self, domain: str, payload: str) -> str:
        msg = domain.encode() + b"\x00" + payload.encode()
        return _b64(hmac.digest(self._key, msg, "sha256")[:MAC_BYTES])

    def sign(self, kind: TokenKind, payload: str) -> str:
        body = payload if _PLAIN.fullmatch(payload) else _ENCODED + _b64(payload.encode())
        return f"{body}.{self._mac(kind.value, payload)}"

    def verify(self, kind: TokenKind, token: str) -> str | None:
        """The payload if ``token`` was signed for ``kind`` with this secret, else None."""
        if len(token) > _MAX_TOKEN:
            return None
        body, dot, mac = token.rpartition(".")
        if not dot or not body:
            return None
        if body.startswith(_ENCODED):
            if not _B64.fullmatch(body[1:]):
                return None
            try:
                payload = _unb64(body[1:]).decode()
            except (ValueError, UnicodeDecodeError):
                return None
            if _PLAIN.fullmatch(payload):
                return None  # one spelling per payload
        elif _PLAIN.fullmatch(body):
            payload = body
        else:
            return None
        if not hmac.compare_digest(mac.encode(), self._mac(kind.value, payload).encode()):
            return None
        return payload

    def link_id(self, delivery_id: str, index: int, url: str) -> str:
        """Stable for the same delivery, position and URL: retries reuse the stored row."""
        msg = f"link\x00{delivery_id}\x00{index}\x00{url}".encode()
        return _b64(hmac.digest(self._key, msg, "sha256")[:LINK_ID_BYTES])


@dataclass(frozen=True)
class Links:
    """Where Herald's tracking endpoints live, under ``HERALD_PUBLIC_URL``."""

    base_url: str
    signer: Signer

    def open_url(self, delivery_id: str, *, pixel: bool = True) -> str:
        """The pixel (``.gif``, for mail clients) or the bare link apps may GET."""
        token = self.signer.sign(TokenKind.OPEN, delivery_id)
        return f"{self.base_url}/t/o/{token}" + (".gif" if pixel else "")

    def click_url(self, link_id: str) -> str:
        return f"{self.base_url}/t/c/{self.signer.sign(TokenKind.CLICK, link_id)}"

    def unsubscribe_url(self, delivery_id: str) -> str:
        return f"{self.base_url}/u/{self.signer.sign(TokenKind.UNSUBSCRIBE, delivery_id)}"

    def is_own(self, url: str) -> bool:
        """Already one of ours (an unsubscribe or a tracking link): never rewritten."""
        return any(url.startswith(f"{self.base_url}{p}") for p in ("/u/", "/t/"))


@dataclass(frozen=True)
class TrackedUrl:
    link_id: str
    url: str


def trackable(url: str) -> bool:
    return url.lower().startswith(("http://", "https://"))


class _Collector:
    """Hands out link ids in document order and remembers the original URLs."""

    def __init__(self, links: Links, delivery_id: str) -> None:
        self.links = links
        self.delivery_id = delivery_id
        self.tracked: list[TrackedUrl] = []

    def __call__(self, url: str) -> str | None:
        """The tracked replacement for ``url``, or None to leave it alone."""
        if not trackable(url) or self.links.is_own(url) or len(url) > MAX_URL:
            return None
        link_id = self.links.signer.link_id(self.delivery_id, len(self.tracked), url)
        self.tracked.append(TrackedUrl(link_id, url))
        return self.links.click_url(link_id)


# --- HTML ---------------------------------------------------------------------------

# One attribute inside a start tag, from just after the tag name (HTML's tolerant rules).
_ATTR = re.compile(
    r"""[\s/]*(?P<name>[^\s/>"'=][^\s/>"'=]*)"""
    r"""(?:\s*=\s*(?P<value>"[^"]*"|'[^']*'|[^\s>]*))?"""
)
_TAG_NAME = re.compile(r"<[A-Za-z][^\s/>]*")


def _rewrite_tag(tag: str, replace: Callable[[str], str | None]) -> str:
    """The start tag with its (first) href rewritten by ``replace``; other bytes untouched."""
    found = _href(tag)
    if found is None:
        return tag
    start, end, url = found
    new = replace(url)
    if new is None:
        return tag
    return f'{tag[:start]}"{html.escape(new, quote=True)}"{tag[end:]}'


@functools.lru_cache(maxsize=256)
def _href(tag: str) -> tuple[int, int, str] | None:
    """Where a start tag's first href value is, and its URL (cached: tags repeat per send)."""
    name = _TAG_NAME.match(tag)
    if name is None:
        return None
    pos = name.end()
    while pos < len(tag):
        m = _ATTR.match(tag, pos)
        if m is None or m.end() == pos:
            break
        pos = m.end()
        if m.group("name").lower() != "href":
            continue
        raw = m.group("value")
        if raw is None:
            return None
        if raw[:1] in ("'", '"'):
            raw = raw[1:-1]
        start, end = m.span("value")
        return start, end, html.unescape(raw).strip()
    return None


class _Locator(HTMLParser):
    """Finds ``<a>`` start tags and the last ``</body>``, skipping comments and scripts."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.anchors: list[tuple[tuple[int, int], str]] = []
        self.body_end: tuple[int, int] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            raw = self.get_starttag_text()
            if raw is not None:
                self.anchors.append((self.getpos(), raw))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag == "body":
            self.body_end = self.getpos()


def _offsets(text: str) -> list[int]:
    """Where each line starts, to turn HTMLParser's (line, column) into an index."""
    starts = [0]
    at = text.find("\n")
    while at != -1:
        starts.append(at + 1)
        at = text.find("\n", at + 1)
    return starts


@functools.lru_cache(maxsize=32)
def _locate(document: str) -> tuple[tuple[tuple[int, str], ...], int | None]:
    """The ``<a>`` start tags (offset, text) and the last ``</body>`` offset.

    Cached by the document: a broadcast often renders the same body for every recipient,
    and the parse was most of the rewrite.
    """
    locator = _Locator()
    try:
        locator.feed(document)
        locator.close()
    except AssertionError:
        # html.parser gives up on a few malformed declarations (``<![foo]>``): the links
        # found before it are still rewritten, the rest of the document is sent as written.
        pass
    starts = _offsets(document)
    anchors = tuple((starts[line - 1] + col, raw) for (line, col), raw in locator.anchors)
    body_end = None
    if locator.body_end is not None:
        line, col = locator.body_end
        body_end = starts[line - 1] + col
    return anchors, body_end


def pixel_tag(url: str) -> str:
    src = html.escape(url, quote=True)
    return f'<img src="{src}" width="1" height="1" alt="" style="display:none">'


def rewrite_html(
    document: str, links: Links, delivery_id: str, *, pixel: bool = True
) -> tuple[str, list[TrackedUrl]]:
    """Every http(s) ``<a href>`` through a click link, and the open pixel before ``</body>``."""
    anchors, end = _locate(document)
    collect = _Collector(links, delivery_id)
    parts: list[str] = []
    cursor = 0
    for at, raw in anchors:
        if document.startswith(raw, at):
            parts += [document[cursor:at], _rewrite_tag(raw, collect)]
            cursor = at + len(raw)
    rest = document[cursor:]
    if pixel:
        tag = pixel_tag(links.open_url(delivery_id))
        if end is not None and end >= cursor:
            rest = rest[: end - cursor] + tag + rest[end - cursor :]
        else:
            rest += tag
    return "".join(parts) + rest, collect.tracked


# --- plain text (SMS) ------------------------------------------------------------------

_URL = re.compile(r"""https?://[^\s<>"']+""", re.IGNORECASE)
_TRAILING = ".,;:!?"


def _split_trailing(url: str) -> tuple[str, str]:
    """Punctuation that ends a sentence is not part of the link; nor is an unmatched ``)``."""
    end = len(url)
    while end > 0:
        ch = url[end - 1]
        if ch in _TRAILING or (ch == ")" and url.count("(", 0, end) < url.count(")", 0, end)):
            end -= 1
            continue
        break
    return url[:end], url[end:]


def rewrite_text(text: str, links: Links, delivery_id: str) -> tuple[str, list[TrackedUrl]]:
    """Every http(s) URL in plain text replaced by its short click link."""
    collect = _Collector(links, delivery_id)

    def sub(m: re.Match[str]) -> str:
        url, tail = _split_trailing(m.group(0))
        if "://" not in url or url.endswith("://"):
            return m.group(0)
        new = collect(url)
        return m.group(0) if new is None else new + tail

    return _URL.sub(sub, text), collect.tracked
