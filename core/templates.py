"""Sandboxed Jinja2: flows are tenant-authored, so templates must not reach Python internals."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from jinja2 import TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment

_env = ImmutableSandboxedEnvironment(autoescape=False, keep_trailing_newline=True)
_html_env = ImmutableSandboxedEnvironment(autoescape=True, keep_trailing_newline=True)


class TemplateError(ValueError):
    """A template failed to compile or render; the message says where."""


def check_template(source: str, *, html: bool = False) -> str:
    """Compile once so a broken template is refused when the flow is saved, not at send time."""
    try:
        _compile(source, html)
    except TemplateSyntaxError as exc:
        raise TemplateError(f"template error on line {exc.lineno}: {exc.message}") from exc
    return source


@lru_cache(maxsize=2048)
def _compile(source: str, html: bool) -> Any:
    template = (_html_env if html else _env).from_string(source)
    # Jinja keeps a template's globals as a ChainMap and walks all of it twice per render
    # (a third of a broadcast's rendering time). Ours never change: a flat copy is the same.
    template.globals = dict(template.globals)
    return template


def render(source: str, context: dict[str, Any], *, html: bool = False) -> str:
    try:
        return str(_compile(source, html).render(context))
    except TemplateSyntaxError as exc:
        raise TemplateError(f"template error on line {exc.lineno}: {exc.message}") from exc
    except Exception as exc:  # sandbox violations, bad filters, type errors in expressions
        raise TemplateError(f"template failed to render: {exc}") from exc


def render_tree(value: Any, context: dict[str, Any]) -> Any:
    """Render every string inside a JSON-like value (webhook payloads, push data)."""
    if isinstance(value, str):
        return render(value, context)
    if isinstance(value, dict):
        return {k: render_tree(v, context) for k, v in value.items()}
    if isinstance(value, list):
        return [render_tree(v, context) for v in value]
    return value


def check_tree(value: Any) -> Any:
    if isinstance(value, str):
        check_template(value)
    elif isinstance(value, dict):
        for v in value.values():
            check_tree(v)
    elif isinstance(value, list):
        for v in value:
            check_tree(v)
    return value
