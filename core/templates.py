"""Sandboxed Jinja2 templates: compiled once when a flow is saved, rendered at send time.

Flows are tenant-authored, so templates must not reach Python internals, nor take a
process's memory or time: they render in ``core.template_env.LimitedEnvironment``, whose
budget stops a rendering with a ``RenderLimitError`` (a ``TemplateError``) naming the limit.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from jinja2 import TemplateSyntaxError

from core.limits import template_problem
from core.render_budget import RenderLimitError, TemplateError, begin, end
from core.template_env import LimitedEnvironment

__all__ = [
    "RenderLimitError",
    "TemplateError",
    "check_template",
    "check_tree",
    "render",
    "render_tree",
]

_env = LimitedEnvironment(autoescape=False, keep_trailing_newline=True)
_html_env = LimitedEnvironment(autoescape=True, keep_trailing_newline=True)


def check_template(source: str, *, html: bool = False) -> str:
    """Compile once so a broken template is refused when the flow is saved, not at send time."""
    problem = template_problem(source)
    if problem is not None:
        raise TemplateError(problem)
    _compiled(source, html)
    return source


def _compiled(source: str, html: bool) -> Any:
    try:
        return _compile(source, html)
    except TemplateSyntaxError as exc:
        raise TemplateError(f"template error on line {exc.lineno}: {exc.message}") from exc
    except RecursionError as exc:  # Jinja's parser and compiler recurse on nesting
        raise TemplateError("template nests too deeply") from exc


@lru_cache(maxsize=2048)
def _compile(source: str, html: bool) -> Any:
    token = begin(compiling=True)  # constant folding gets a budget of its own
    try:
        template = (_html_env if html else _env).from_string(source)
    finally:
        end(token)
    # Jinja keeps a template's globals as a ChainMap and walks all of it twice per render
    # (a third of a broadcast's rendering time). Ours never change: a flat copy is the same.
    template.globals = dict(template.globals)
    return template


def render(source: str, context: dict[str, Any], *, html: bool = False) -> str:
    template = _compiled(source, html)
    token = begin()
    try:
        # The output is joined by ``_concat``, which adds up the parts' sizes first: each
        # part is bounded, and so is their number (every loop iteration is a step).
        return str(template.render(context))
    except TemplateError:
        raise
    except Exception as exc:  # sandbox violations, bad filters, type errors in expressions
        raise TemplateError(f"template failed to render: {exc}") from exc
    finally:
        end(token)


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
