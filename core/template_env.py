"""The Jinja2 environment templates render in: the immutable sandbox, with every place
work can grow routed through the rendering's budget (``core.render_budget``): loops,
calls, filters, the intercepted operators, ``~``, buffered output and what is printed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sized
from typing import Any

from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame, optimizeconst
from jinja2.runtime import markup_join, str_join
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import generate_lorem_ipsum
from markupsafe import Markup

from core.render_budget import (
    FILTER_CHECKS,
    active,
    check_format,
    check_method,
    check_power,
    check_printf,
    check_times,
    each,
    words,
)

# Values printed as they are, at a bounded length (an int's is capped by Python).
_PLAIN = frozenset({str, Markup, int, float, bool, type(None)})
# Filters that return items or containers rather than text: their input is not printed.
_STRUCTURAL = words(
    "abs attr batch count d default dictsort first float groupby int items last length "
    "list map max min random reject rejectattr reverse round select selectattr slice sort "
    "sum unique"
)


def _guarded_join(join: Callable[[Iterable[Any]], str]) -> Callable[[Iterable[Any]], str]:
    def guarded(seq: Iterable[Any]) -> str:
        budget = active()
        items = list(seq)
        budget.charge(sum(budget.text_size(i) for i in items))
        return join(items)

    return guarded


def _concat(parts: Iterable[str]) -> str:
    """Jinja's ``concat`` for buffered output: ``{% set %}`` blocks, macros, call blocks."""
    budget = active()
    items = parts if isinstance(parts, list) else list(parts)
    budget.charge(sum(map(len, items)))
    return "".join(items)


def _finalize(value: Any) -> Any:
    """Every ``{{ ... }}`` passes here before it is printed: a list or a dict is printed
    whole, so its printed size is estimated first. (Text needs nothing here: ``_concat``
    adds up the parts before joining them.)"""
    if type(value) not in _PLAIN:
        budget = active()
        budget.charge(budget.text_size(value))
    return value


def _lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
    active().charge(int(n) * int(max) * 12)
    return generate_lorem_ipsum(n, html, min, max)


def _guard_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    passes_arg = hasattr(func, "jinja_pass_arg")  # context, eval context or environment first
    check = FILTER_CHECKS.get(name)

    def guarded(*args: Any, **kwargs: Any) -> Any:
        budget = active()
        budget.tick()
        at = 1 if passes_arg else 0
        value = args[at]
        if check is not None:
            value = check(budget, value, args[at + 1 :], kwargs)
            args = (*args[:at], value, *args[at + 1 :])
        elif name not in _STRUCTURAL:
            budget.text_size(value)  # a text filter prints its input first
        return budget.result(func(*args, **kwargs))

    functools.update_wrapper(guarded, func)
    if passes_arg:
        guarded.jinja_pass_arg = func.jinja_pass_arg  # type: ignore[attr-defined]
    return guarded


class _LimitedCodeGenerator(CodeGenerator):
    """Routes ``~`` and ``{% for %}`` through the budget; Jinja has no hook for either."""

    @optimizeconst
    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        if frame.eval_ctx.volatile:
            func = (
                "(environment.herald_markup_join if context.eval_ctx.volatile "
                "else environment.herald_str_join)"
            )
        elif frame.eval_ctx.autoescape:
            func = "environment.herald_markup_join"
        else:
            func = "environment.herald_str_join"
        self.write(f"{func}((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        loop = nodes.EnvironmentAttribute("herald_loop", lineno=node.lineno)
        node.iter = nodes.Call(loop, [node.iter], [], None, None, lineno=node.lineno)
        super().visit_For(node, frame)


class LimitedEnvironment(ImmutableSandboxedEnvironment):
    """The immutable sandbox with a budget on steps, time and the size of what it builds."""

    code_generator_class = _LimitedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, **options: Any) -> None:
        super().__init__(finalize=_finalize, **options)
        self.filters = {name: _guard_filter(name, f) for name, f in self.filters.items()}
        self.globals["lipsum"] = _lipsum
        self.herald_loop = each
        self.herald_str_join = _guarded_join(str_join)
        self.herald_markup_join = _guarded_join(markup_join)

    # ``concat`` joins buffered output: a {% set %} block, a macro, a call block.
    concat = staticmethod(_concat)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        """``*``, ``**``, ``+`` and ``%``, sized before they run (they need no step: only
        a loop or a call repeats work)."""
        budget = active()
        if operator == "*":
            check_times(budget, left, right)
        elif operator == "**":
            check_power(left, right)
        elif operator == "+" and isinstance(left, str) and isinstance(right, str):
            budget.charge(len(left) + len(right))
        elif operator == "+" and isinstance(left, list | tuple) and isinstance(right, Sized):
            budget.charge(8 * (len(left) + len(right)))
        elif operator == "%" and isinstance(left, str):
            check_printf(budget, left, right)
            return budget.result(left % right)
        return self.binop_table[operator](left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        budget = active()
        budget.tick()
        args = check_method(budget, __obj, args)
        result = super().call(__context, __obj, *args, **kwargs)
        return result if __obj is each else budget.result(result)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapper = super().wrap_str_format(value)
        if wrapper is None:
            return None
        fmt, mapped = value.__self__, value.__name__ == "format_map"

        @functools.wraps(wrapper)
        def checked(*args: Any, **kwargs: Any) -> str:
            budget = active()
            values = args[0].values() if mapped and args else (*args, *kwargs.values())
            check_format(budget, fmt, values)
            return str(budget.result(wrapper(*args, **kwargs)))

        return checked
