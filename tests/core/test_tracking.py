"""Signed tracking tokens and link rewriting: pure functions, no database."""

from __future__ import annotations

import html
import re
from collections.abc import Callable

import pytest

from core.tracking import (
    MAX_URL,
    Links,
    Signer,
    TokenKind,
    _locate,
    rewrite_html,
    rewrite_text,
)

BASE = "https://herald.example"
DLV = "dlv_0123456789abcdef0123456789abcdef"


@pytest.fixture
def signer() -> Signer:
    return Signer("s3cret")


@pytest.fixture
def links(signer: Signer) -> Links:
    return Links(BASE, signer)


def click_target(links: Links, href: str, tracked: dict[str, str]) -> str:
    """The original URL behind a rewritten click link."""
    assert href.startswith(f"{BASE}/t/c/")
    link_id = links.signer.verify(TokenKind.CLICK, href.removeprefix(f"{BASE}/t/c/"))
    assert link_id is not None
    return tracked[link_id]


# --- tokens ----------------------------------------------------------------------


def test_token_round_trip_and_compact_shape(signer: Signer) -> None:
    token = signer.sign(TokenKind.OPEN, DLV)
    payload, mac = token.split(".")
    assert payload == DLV
    assert len(mac) == 16  # 12 bytes, base64url without padding
    assert signer.verify(TokenKind.OPEN, token) == DLV


def test_token_kinds_are_not_interchangeable(signer: Signer) -> None:
    for kind in TokenKind:
        token = signer.sign(kind, DLV)
        others = [k for k in TokenKind if k != kind]
        assert signer.verify(kind, token) == DLV
        assert all(signer.verify(other, token) is None for other in others)


def test_another_secret_does_not_verify(signer: Signer) -> None:
    token = signer.sign(TokenKind.CLICK, "abc")
    assert Signer("other").verify(TokenKind.CLICK, token) is None


@pytest.mark.parametrize(
    "tamper",
    [
        lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),  # the MAC
        lambda t: "dlv_1" + t[t.index(".") :],  # the payload
        lambda t: t.split(".")[0],  # no MAC
        lambda t: "." + t.split(".")[1],  # no payload
        lambda t: t + "x",
        lambda t: t[:-2],
        lambda t: "",
        lambda t: "~!!!." + t.split(".")[1],
        lambda t: "x" * 2000,
        lambda t: t.replace("_", "/", 1),
        lambda t: t + "é",
    ],
)
def test_tampered_tokens_fail(signer: Signer, tamper: Callable[[str], str]) -> None:
    token = signer.sign(TokenKind.OPEN, DLV)
    assert signer.verify(TokenKind.OPEN, tamper(token)) is None


def test_odd_payloads_are_encoded_and_round_trip(signer: Signer) -> None:
    for payload in ("a.b/c", "ünï", "x" * 200, "has space"):
        token = signer.sign(TokenKind.UNSUBSCRIBE, payload)
        assert token.startswith("~")
        assert signer.verify(TokenKind.UNSUBSCRIBE, token) == payload


def test_a_plain_payload_has_one_spelling(signer: Signer) -> None:
    token = signer.sign(TokenKind.OPEN, "abc")
    mac = token.split(".")[1]
    assert signer.verify(TokenKind.OPEN, f"~YWJj.{mac}") is None  # base64url("abc")


def test_empty_secret_is_refused() -> None:
    with pytest.raises(ValueError):
        Signer("")


def test_link_ids_are_derived(signer: Signer) -> None:
    one = signer.link_id(DLV, 0, "https://a.test/")
    assert one == signer.link_id(DLV, 0, "https://a.test/")
    assert len(one) == 16
    assert (
        len(
            {
                one,
                signer.link_id(DLV, 1, "https://a.test/"),
                signer.link_id(DLV, 0, "https://b.test/"),
                signer.link_id("dlv_other", 0, "https://a.test/"),
                Signer("other").link_id(DLV, 0, "https://a.test/"),
            }
        )
        == 5
    )


def test_urls_live_under_the_public_url(links: Links) -> None:
    assert links.open_url(DLV).startswith(f"{BASE}/t/o/")
    assert links.open_url(DLV).endswith(".gif")
    assert not links.open_url(DLV, pixel=False).endswith(".gif")
    assert links.click_url("abc").startswith(f"{BASE}/t/c/abc.")
    assert links.unsubscribe_url(DLV).startswith(f"{BASE}/u/{DLV}.")


# --- HTML ------------------------------------------------------------------------


def test_html_links_are_rewritten_and_the_pixel_added(links: Links) -> None:
    doc = (
        "<html><body>"
        '<p><a href="https://shop.test/o?id=7&amp;ref=mail">order</a></p>'
        "<a class='btn' title=\"x\" href='http://shop.test/a'>single</a>"
        '<A HREF="HTTPS://SHOP.TEST/UP">upper</A>'
        "<a href=https://shop.test/unquoted>bare</a>"
        '<a class="tight"href="https://shop.test/tight">tight</a>'
        "</body></html>"
    )
    out, tracked = rewrite_html(doc, links, DLV)
    by_id = {t.link_id: t.url for t in tracked}
    assert [t.url for t in tracked] == [
        "https://shop.test/o?id=7&ref=mail",  # &amp; unescaped before it is stored
        "http://shop.test/a",
        "HTTPS://SHOP.TEST/UP",
        "https://shop.test/unquoted",
        "https://shop.test/tight",
    ]
    assert "shop.test" not in out
    hrefs = re.findall(r'href="([^"]*)"', out, re.IGNORECASE)
    assert [click_target(links, h, by_id) for h in hrefs] == [t.url for t in tracked]
    # Everything else in the tags is left as written.
    assert '<a class=\'btn\' title="x" href="' in out
    assert '<A HREF="' in out and '<a class="tight"href="' in out
    pixel = f'<img src="{links.open_url(DLV)}" width="1" height="1" alt="" style="display:none">'
    assert out.endswith(pixel + "</body></html>")


def test_links_that_are_not_http_or_are_ours_stay(links: Links) -> None:
    unsubscribe = links.unsubscribe_url(DLV)
    doc = (
        '<a href="mailto:ada@example.com">mail</a>'
        '<a href="tel:+14155550100">call</a>'
        '<a href="#top">top</a>'
        '<a href="/relative">rel</a>'
        '<a href="javascript:alert(1)">js</a>'
        '<a name="anchor">no href</a>'
        f'<a href="{unsubscribe}">unsubscribe</a>'
        '<a data-href="https://d.test/">data</a>'
        '<a title="href=https://t.test/" href="ftp://f.test/">ftp</a>'
        f'<a href="https://x.test/{"y" * MAX_URL}">too long</a>'
    )
    out, tracked = rewrite_html(doc, links, DLV, pixel=False)
    assert tracked == []
    assert out == doc


def test_only_anchor_tags_are_touched(links: Links) -> None:
    doc = (
        '<head><link rel="stylesheet" href="https://cdn.test/s.css"></head><body>'
        '<!-- <a href="https://comment.test/">old</a> -->'
        '<img src="https://cdn.test/logo.png" alt="logo">'
        "<script>var a = '<a href=\"https://script.test/\">';</script>"
        '<area href="https://area.test/">'
        '<abbr href="https://abbr.test/">x</abbr>'
        "</body>"
    )
    out, tracked = rewrite_html(doc, links, DLV, pixel=False)
    assert tracked == []
    assert out == doc


def test_multiline_html_keeps_positions(links: Links) -> None:
    doc = (
        '<body>\r\n  <p>one</p>\n\n <a\n  href="https://a.test/1"\n>x</a>\n'
        ' <a href="https://a.test/2">y</a>\n</body>\n'
    )
    out, tracked = rewrite_html(doc, links, DLV)
    assert [t.url for t in tracked] == ["https://a.test/1", "https://a.test/2"]
    assert '<a\n  href="https://herald.example/t/c/' in out
    assert out.count("<img ") == 1
    assert out.index("<img ") < out.index("</body>")
    assert out.endswith("</body>\n")


def test_one_body_sent_to_many_gets_each_recipients_own_links(links: Links) -> None:
    """The parse is cached by document; the links and the pixel stay per delivery."""
    doc = '<body><a href="https://a.test/sale">sale</a></body>'
    first, t1 = rewrite_html(doc, links, "dlv_one")
    second, t2 = rewrite_html(doc, links, "dlv_two")
    assert [t.url for t in t1] == [t.url for t in t2] == ["https://a.test/sale"]
    assert t1[0].link_id != t2[0].link_id
    assert links.click_url(t2[0].link_id) in second
    assert links.click_url(t1[0].link_id) not in second
    assert html.escape(links.open_url("dlv_two"), quote=True) in second
    _locate.cache_clear()
    assert rewrite_html(doc, links, "dlv_two") == (second, t2)


def test_pixel_goes_at_the_end_without_a_body_tag(links: Links) -> None:
    out, _ = rewrite_html("<p>Hi</p>", links, DLV)
    assert out.startswith("<p>Hi</p><img src=")
    assert out.endswith('style="display:none">')


def test_pixel_before_an_uppercase_body_end(links: Links) -> None:
    out, _ = rewrite_html("<BODY><p>Hi</p></BODY>", links, DLV)
    assert out.endswith('style="display:none"></BODY>')


def test_a_retried_render_reuses_the_ids(links: Links) -> None:
    doc = '<a href="https://a.test/">a</a><a href="https://a.test/">again</a>'
    first = rewrite_html(doc, links, DLV)
    assert rewrite_html(doc, links, DLV) == first
    ids = [t.link_id for t in first[1]]
    assert len(set(ids)) == 2  # the same URL twice: two positions, two links


def test_malformed_html_does_not_break(links: Links) -> None:
    for doc in ('<a href="https://a.test/', "<a", "<<a>>", "</a>", '<a href="">x</a>'):
        out, tracked = rewrite_html(doc, links, DLV, pixel=False)
        assert out == doc
        assert tracked == []


def test_outlook_markup_and_unparsable_declarations(links: Links) -> None:
    doc = (
        '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN" "http://w3.org/x.dtd">'
        '<html xmlns:v="urn:schemas-microsoft-com:vml"><body>'
        '<!--[if mso]><v:roundrect href="https://vml.test/">x</v:roundrect><![endif]-->'
        '<![if !mso]><a href="https://a.test/1">a</a><![endif]></body></html>'
    )
    out, tracked = rewrite_html(doc, links, DLV)
    assert [t.url for t in tracked] == ["https://a.test/1"]
    assert 'href="https://vml.test/"' in out
    # html.parser gives up here: what came before is tracked, the rest is sent as written.
    broken = '<a href="https://a.test/1">a</a><![foo bar]><a href="https://a.test/2">b</a>'
    out, tracked = rewrite_html(broken, links, DLV)
    assert [t.url for t in tracked] == ["https://a.test/1"]
    assert out.startswith('<a href="https://herald.example/t/c/')
    assert '<![foo bar]><a href="https://a.test/2">b</a><img src=' in out


def test_rewritten_href_is_attribute_safe(links: Links) -> None:
    doc = '<a href="https://a.test/?q=&quot;x&quot;&lt;">a</a>'
    out, [t] = rewrite_html(doc, links, DLV, pixel=False)
    assert t.url == 'https://a.test/?q="x"<'
    assert out == f'<a href="{links.click_url(t.link_id)}">a</a>'


# --- plain text ------------------------------------------------------------------


def test_text_urls_become_short_links(links: Links) -> None:
    text = (
        "Track it at https://shop.test/o?id=7&x=1. "
        "Docs (see https://wiki.test/Foo_(bar)) or http://a.test/!"
    )
    out, tracked = rewrite_text(text, links, DLV)
    by_id = {t.link_id: t.url for t in tracked}
    assert [t.url for t in tracked] == [
        "https://shop.test/o?id=7&x=1",
        "https://wiki.test/Foo_(bar)",
        "http://a.test/",
    ]
    words = out.split()
    assert words[3].endswith(".") and words[-1].endswith("!")
    assert click_target(links, words[3][:-1], by_id) == tracked[0].url
    assert f"(see {links.click_url(tracked[1].link_id)}) or" in out
    assert out.startswith("Track it at https://herald.example/t/c/")


def test_text_without_urls_is_unchanged(links: Links) -> None:
    for text in ("Your code is 123456", "mailto:a@b.test", "http://", "see http://."):
        assert rewrite_text(text, links, DLV) == (text, [])
