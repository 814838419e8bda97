from __future__ import annotations

import pytest

from core.templates import TemplateError, check_template, render, render_tree


def test_render_and_html_autoescape() -> None:
    ctx = {"subscriber": {"name": "<b>Ada</b>"}}
    assert render("Hi {{ subscriber.name }}", ctx) == "Hi <b>Ada</b>"
    assert render("<p>{{ subscriber.name }}</p>", ctx, html=True) == "<p>&lt;b&gt;Ada&lt;/b&gt;</p>"


def test_render_tree_renders_nested_strings_only() -> None:
    out = render_tree({"a": "{{ x }}", "b": [1, "{{ x }}!"], "c": True}, {"x": "y"})
    assert out == {"a": "y", "b": [1, "y!"], "c": True}


def test_syntax_error_names_the_line() -> None:
    with pytest.raises(TemplateError, match="line 2"):
        check_template("ok\n{% if %}")


def test_sandbox_blocks_internals() -> None:
    with pytest.raises(TemplateError):
        render("{{ ''.__class__.__mro__[1].__subclasses__() }}", {})
