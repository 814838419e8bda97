"""Rendering has a budget: hostile templates stop with a reason, ordinary ones are unchanged."""

from __future__ import annotations

import resource
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from core.limits import LimitSettings, configure
from core.templates import RenderLimitError, TemplateError, check_template, render

CONTEXT: dict[str, Any] = {
    "subscriber": {"name": "Ada <admin>", "email": "ada@example.com", "locale": "de"},
    "data": {
        "plan": "pro",
        "items": [{"name": f"item {i}", "price": i * 1.5, "tags": ["a", "b"]} for i in range(30)],
        "thread": "t-1",
        "text": "line one\nline two\tand a tab",
    },
    "event": {"id": "evt_1", "type": "order.placed"},
}

# What flows really do: loops, macros, filters, %-formatting, str methods, set blocks, ~.
ORDINARY = [
    "Welcome, {{ subscriber.name }}!",
    "{% for it in data['items'] %}{{ loop.index }}. {{ it.name|title }}: "
    "{{ '%.2f' % it.price }} {{ it.tags|join(',') }}\n{% endfor %}",
    "{% macro row(i) %}<tr><td>{{ i.name }}</td></tr>{% endmacro %}"
    "{% for i in data['items'][:5] %}{{ row(i) }}{% endfor %}",
    "{{ data['items']|map(attribute='price')|sum|round(2) }} {{ data['items']|length }} "
    "{{ data.plan|upper|center(12) }} {{ data.text|indent(2) }} {{ data.text|wordwrap(5) }}",
    "{% set summary %}{{ data.plan }} for {{ subscriber.email }}{% endset %}"
    "{{ summary ~ ' / ' ~ event.id }} {{ '{}: {:>6}'.format(event.type, data.plan) }}",
    "{{ data|tojson }} {{ data['items']|batch(7)|list|length }} {{ range(5)|list }} "
    "{{ data.plan.replace('p', 'P').ljust(6, '.') }} {{ ','.join(['a', 'b']) }}",
    "{{ data.text.expandtabs(4) }} {{ data.plan * 3 }} {{ 2 ** 10 }} {{ [1, 2] + [3] }} "
    "{{ 'x' + 'y' }} {{ data['items']|selectattr('price', 'gt', 10)|map(attribute='name')|list }}",
    "{{ lipsum(1, html=false)|length > 0 }} {{ data['items']|slice(3)|list|length }} "
    "{{ data['items']|groupby('price')|list|length }} {{ '%s-%d' % ('a', 3) }}",
]

HOSTILE = [
    "{{ 'x' * 1000000000 }}",
    "{{ 'x' * 10**9 }}",
    "{{ [0] * 10**9 }}",
    "{{ 7 ** (10 ** 9) }}",
    "{{ 'x'|center(1000000000) }}",
    "{{ 'x'.ljust(1000000000) }}",
    "{{ '{:>1000000000}'.format('x') }}",
    "{{ '{:.1000000000f}'.format(1.5) }}",
    "{{ '%1000000000s' % 'x' }}",
    "{{ '%*s' % (1000000000, 'x') }}",
    "{{ '%1000000000d'|format(1) }}",
    "{% set a = 'x' * 100000 %}{{ ('{0}' * 10000).format(a) }}",
    "{% set a = 'x' * 100000 %}{{ ('{x}' * 10000).format_map({'x': a}) }}",
    "{% set a = 'x' * 100000 %}{{ ('%s' * 10000) % ((a,) * 10000) }}",
    "{% set a = 'x' * 100000 %}{{ ('%(x)s' * 10000) % {'x': a} }}",
    "{% set a = 'x' * 100000 %}{{ ('%(x)s' * 10000)|format(x=a) }}",
    "{% set a = 'x' * 600000 %}{{ a ~ a }}",
    "{% set a %}{{ 'x' * 600000 }}{{ 'x' * 600000 }}{% endset %}{{ a|length }}",
    "{% set a = 'x' * 500000 %}{{ [a] * 100000 }}",
    "{{ (['x' * 500000] * 100000)|join }}",
    "{{ range(100000)|join('x' * 500000) }}",
    "{{ ('x' * 500000)|replace('x', 'yyyy') }}",
    "{{ range(100000)|map('string')|map('center', 900000)|list|length }}",
    "{{ lipsum(100000) }}",
    "{{ ('a\\tb' * 100000).expandtabs(100000) }}",
    "{{ (1).to_bytes(1000000000, 'big') }}",
    "{{ 'abc'.translate({97: 'x' * 100000}) }}",
    "{{ range(10)|slice(1000000000)|list }}",
    "{{ [1, 2]|batch(1000000000, 'x')|list }}",
    "{{ [[1] * 1000] * 1000|sum(start=[]) }}",
    "{{ event|tojson(indent=100000000) }}",
    "{{ ('x' * 1000)|wordwrap(1, wrapstring='y' * 100000) }}",
    "{{ ('x\\n' * 300000)|indent(1000) }}",
    "{% for i in range(100000) %}{{ 'x' * 100 }}{% endfor %}",
    "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}"
    "{% endfor %}{{ ns.s|length }}",
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(40) }}",
]


@pytest.fixture
def limit() -> Iterator[Callable[..., None]]:
    def set_limits(**values: Any) -> None:
        configure(LimitSettings(**values))

    yield set_limits
    configure(None)


@pytest.mark.parametrize("source", ORDINARY)
@pytest.mark.parametrize("html", [False, True])
def test_ordinary_templates_render_as_plain_jinja_does(source: str, html: bool) -> None:
    plain = ImmutableSandboxedEnvironment(autoescape=html, keep_trailing_newline=True)
    if "lipsum" in source:  # random text: compare its shape only
        plain.globals["lipsum"] = lambda *a, **k: "x"
    assert render(source, CONTEXT, html=html) == plain.from_string(source).render(CONTEXT)


@pytest.mark.parametrize("source", HOSTILE)
def test_hostile_templates_stop_with_a_reason(source: str) -> None:
    check_template(source)  # they compile: it is the rendering that must be bounded
    with pytest.raises(RenderLimitError) as caught:
        render(source, CONTEXT)
    assert "HERALD_MAX_RENDER" in str(caught.value) or "not allowed" in str(caught.value)


def test_hostile_templates_leave_the_memory_alone() -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for source in HOSTILE:
        with pytest.raises(RenderLimitError):
            render(source, CONTEXT)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 200, f"peak memory grew by {grown_mb:.0f} MB"


def test_the_messages_name_the_setting() -> None:
    with pytest.raises(RenderLimitError, match=r"1,000,000,000 characters.*MAX_RENDER_BYTES"):
        render("{{ 'x' * 10**9 }}", {})
    with pytest.raises(RenderLimitError, match=r"200,000 steps.*HERALD_MAX_RENDER_STEPS"):
        render("{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}", {})


def test_limits_follow_the_settings(limit: Callable[..., None]) -> None:
    limit(max_render_bytes=2048, max_render_steps=100)
    assert render("{{ 'x' * 2000 }}", {}) == "x" * 2000
    with pytest.raises(RenderLimitError, match="2,048 limit"):
        render("{{ 'x' * 3000 }}", {})
    with pytest.raises(RenderLimitError, match="output over|2,048"):
        render("{% for i in range(50) %}{{ 'x' * 100 }}{% endfor %}", {})
    assert render("{% for i in range(90) %}{% endfor %}ok", {}) == "ok"
    with pytest.raises(RenderLimitError, match="100 steps"):
        render("{% for i in range(200) %}{% endfor %}", {})


def test_a_loop_with_a_heavy_body_stops_at_the_deadline(limit: Callable[..., None]) -> None:
    limit(max_render_seconds=0.2, max_render_steps=10**9)
    body = "{% if a.b and a.b and a.b and a.b %}{% endif %}" * 200
    source = "{% for i in range(100000) %}" + body + "{% endfor %}"
    check_template(source)  # compiled outside the clock
    with pytest.raises(RenderLimitError, match=r"0\.2 s \(HERALD_MAX_RENDER_SECONDS\)"):
        render(source, {"a": {"b": 1}})


def test_templates_over_the_size_limit_are_refused(limit: Callable[..., None]) -> None:
    limit(max_template_bytes=100)
    check_template("é" * 50)  # 100 bytes in UTF-8
    with pytest.raises(TemplateError, match=r"102 bytes, over the 100-byte limit"):
        check_template("é" * 51)


def test_sandbox_still_blocks_internals() -> None:
    with pytest.raises(TemplateError, match="unsafe"):
        render("{{ ''.__class__.__mro__[1].__subclasses__() }}", {})


@pytest.mark.parametrize(
    "source",
    ["{{" + "(" * 20000 + "1" + ")" * 20000 + "}}", "{% if 1 %}" * 3000 + "{% endif %}" * 3000],
)
def test_deeply_nested_templates_are_refused_not_crashed(source: str) -> None:
    with pytest.raises(TemplateError, match="nests too deeply"):
        check_template(source)
    with pytest.raises(TemplateError, match="nests too deeply"):
        render(source, {})
