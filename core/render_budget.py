"""A rendering's budget: steps, time, and the size of what it builds.

Jinja's sandbox stops attribute tricks, not work: ``{{ 'x' * 10**9 }}`` builds a gigabyte,
and two nested ``range(100000)`` loops run for hours. Every loop iteration, call and filter
is a step, counted against HERALD_MAX_RENDER_STEPS and checked against a deadline
(HERALD_MAX_RENDER_SECONDS): only those repeat work, the rest of a template is as long as
its source. Every value a rendering builds is charged against HERALD_MAX_RENDER_BYTES (one
value) and a multiple of it (all values). Operations whose result can dwarf their inputs
(``*``, ``**``, ``%``, ``center``, ``replace``, ``join``, ``indent``, ``format``, printing a
list that repeats a long string, ...) are estimated here before they run. The deadline is
checked at steps, so a rendering can overrun it by one step's work (one loop iteration's
body, itself bounded by the template's size); compiling a template (once per process) is
Jinja's, not counted.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar, Token
from dataclasses import dataclass
from functools import lru_cache
from string import Formatter
from typing import Any

from core.limits import env_name, limits


def words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# All values one rendering builds, as a multiple of the largest one.
WORK_FACTOR = 16
# Ints beyond this many bits cannot be printed anyway (Python's 4,300-digit limit).
MAX_INT_BITS = 16_384
# str (and Markup, bytes) methods a template may call as they are.
_TEXT_METHODS = words(
    "capitalize casefold count decode encode endswith escape find format format_map hex "
    "index isalnum isalpha isascii isdecimal isdigit isidentifier islower isnumeric "
    "isprintable isspace istitle isupper lower lstrip partition removeprefix removesuffix "
    "rfind rindex rpartition rsplit rstrip split splitlines startswith strip striptags "
    "swapcase title unescape upper"
)
_NUMBER_METHODS = words("as_integer_ratio bit_length conjugate hex is_integer")
_SCALARS = frozenset({int, float, bool, type(None)})
_PRINTF = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?[a-zA-Z%]")


class TemplateError(ValueError):
    """A template failed to compile or render; the message says where."""


class RenderLimitError(TemplateError):
    """A rendering went over a size, step or time limit: the template's fault, not transient."""


@dataclass(slots=True)
class Budget:
    steps_left: int
    bytes_left: int
    deadline: float
    max_bytes: int
    max_steps: int
    seconds: float

    @classmethod
    def start(cls) -> Budget:
        lim = limits()
        return cls(
            steps_left=lim.max_render_steps,
            bytes_left=lim.max_render_bytes * WORK_FACTOR,
            deadline=time.monotonic() + lim.max_render_seconds,
            max_bytes=lim.max_render_bytes,
            max_steps=lim.max_render_steps,
            seconds=lim.max_render_seconds,
        )

    def tick(self) -> None:
        self.steps_left -= 1
        if self.steps_left < 0:
            raise RenderLimitError(
                f"template stopped after {self.max_steps:,} steps (loop iterations, calls, "
                f"filters): {env_name('max_render_steps')}"
            )
        if time.monotonic() > self.deadline:
            raise RenderLimitError(
                f"template stopped after {self.seconds:g} s ({env_name('max_render_seconds')})"
            )

    def charge(self, size: int) -> None:
        """Account for a value of ``size`` characters about to be built (or just built)."""
        if size > self.max_bytes:
            raise RenderLimitError(
                f"template would build a value of {size:,} characters, over the "
                f"{self.max_bytes:,} limit ({env_name('max_render_bytes')})"
            )
        self.bytes_left -= size
        if self.bytes_left < 0:
            raise RenderLimitError(
                f"template built more than {self.max_bytes * WORK_FACTOR:,} characters in all "
                f"({WORK_FACTOR} x {env_name('max_render_bytes')})"
            )

    def text_size(self, value: Any) -> int:
        """The length ``str(value)`` would have, found without building it; a list that
        holds one long string 100,000 times is counted 100,000 times."""
        if isinstance(value, str):
            return len(value)
        if isinstance(value, bool | float | None):
            return 8
        if isinstance(value, int):
            return value.bit_length() // 3 + 2
        total, stack = 0, [value]
        while stack:
            item = stack.pop()
            self.tick()
            if isinstance(item, str):
                total += len(item) + 4
            elif isinstance(item, dict):
                total += 4 * len(item) + 2
                stack.extend(item.keys())
                stack.extend(item.values())
            elif isinstance(item, list | tuple | set | frozenset):
                total += 2 * len(item) + 2
                stack.extend(item)
            else:
                total += 64
            if total > self.max_bytes:
                self.charge(total)  # raises
        return total

    def result(self, value: Any) -> Any:
        """Charge what an operation returned; wrap a lazy result so its items are charged."""
        if type(value) in _SCALARS:
            return value
        if isinstance(value, str | bytes):
            self.charge(len(value))
        elif isinstance(value, list | tuple | dict | set):
            self.charge(8 * len(value))
        elif isinstance(value, Iterator):
            return metered(self, value)
        return value


_budget: ContextVar[Budget | None] = ContextVar("herald_render_budget", default=None)


def active() -> Budget:
    budget = _budget.get()
    if budget is None:  # constant folding at compile time: the same caps, a fresh budget
        budget = Budget.start()
        budget.bytes_left = budget.max_bytes
        _budget.set(budget)
    return budget


def metered(budget: Budget, items: Iterator[Any]) -> Iterator[Any]:
    for item in items:
        budget.tick()
        yield budget.result(item)


def each(iterable: Iterable[Any]) -> Iterator[Any]:
    """Every ``{% for %}`` iterates through this: each iteration is a step."""
    budget = active()
    for item in iterable:
        budget.tick()
        yield item


def begin(*, compiling: bool = False) -> Token[Budget | None]:
    """Start a rendering's budget (or, to compile, a fresh one for constant folding); hand
    the token to ``end``. (Not a context manager: this runs for every rendering.)"""
    return _budget.set(None if compiling else Budget.start())


def end(token: Token[Budget | None]) -> None:
    _budget.reset(token)


# --- estimates of operations that can multiply their input ------------------------------


def _arg(args: tuple[Any, ...], kwargs: dict[str, Any], pos: int, name: str, default: Any) -> Any:
    if len(args) > pos:
        return args[pos]
    return kwargs.get(name, default)


def _int(value: Any) -> int:
    return value if isinstance(value, int) else 0


def check_printf(budget: Budget, fmt: str, values: Any) -> None:
    """``fmt % values`` is at most its text plus, per field, the widest of its width and
    its largest value: a field repeated 10,000 times over a long value is caught here."""
    fields, widest = _printf_fields(fmt)
    if not fields:
        return
    if type(values) is tuple:
        largest = _largest(budget, values)
    elif isinstance(values, dict):
        largest = _largest(budget, values.values())
    else:
        largest = budget.text_size(values)
    budget.charge(len(fmt) + fields * max(widest, largest))


def _largest(budget: Budget, values: Iterable[Any]) -> int:
    return max(map(budget.text_size, values), default=0)


@lru_cache(maxsize=1024)
def _printf_fields(fmt: str) -> tuple[int, int]:
    """How many fields a %-format has, and the widest width or precision it asks for."""
    fields = widest = 0
    for match in _PRINTF.finditer(fmt):
        fields += match.group(0) != "%%"
        for width in match.groups():
            if width == "*":
                raise RenderLimitError("'*' widths are not allowed in templates")
            if width is not None:
                widest = max(widest, int(width))
    return fields, widest


def check_format(budget: Budget, fmt: str, values: Iterable[Any]) -> None:
    """The same for ``str.format``: fields times the largest of widths and values."""
    fields, widest = _format_fields(fmt)
    if fields:
        budget.charge(len(fmt) + fields * max(widest, _largest(budget, values)))


@lru_cache(maxsize=1024)
def _format_fields(fmt: str) -> tuple[int, int]:
    fields = widest = 0
    for _, name, spec, _ in Formatter().parse(fmt):
        fields += name is not None
        if spec and "{" in spec:
            raise RenderLimitError("nested format specs are not allowed in templates")
        for number in re.findall(r"\d+", spec or ""):
            widest = max(widest, int(number))
    return fields, widest


def _replaced(budget: Budget, s: Any, old: Any, new: Any, count: Any) -> None:
    text, old, new = str(s), str(old), str(new)
    hits = len(text) + 1 if old == "" else text.count(old)
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    budget.charge(len(text) + hits * max(0, len(new) - len(old)))


def _joined(budget: Budget, items: list[Any], sep: Any) -> None:
    sizes = sum(budget.text_size(i) for i in items)
    budget.charge(sizes + budget.text_size(sep) * max(0, len(items) - 1))


# An estimate before a filter runs; it returns the value to filter (a lazy one made a list).
_Check = Callable[[Budget, Any, tuple[Any, ...], dict[str, Any]], Any]


def _check_center(b: Budget, v: Any, a: tuple[Any, ...], k: dict[str, Any]) -> Any:
    b.charge(max(b.text_size(v), _int(_arg(a, k, 0, "width", 80))))
    return v


def _check_indent(b: Budget, v: Any, a: tuple[Any, ...], k: dict[str, Any]) -> Any:
    width = _arg(a, k, 0, "width", 4)
    pad = len(width) if isinstance(width, str) else _int(width)
    lines = v.count("\n") + 1 if isinstance(v, str) else 1
    b.charge(b.text_size(v) + lines * pad)
    return v


def _check_format_filter(b: Budget, v: Any, a: tuple[Any, ...], k: dict[str, Any]) -> Any:
    check_printf(b, str(v), k or a)  # the filter does ``value % (kwargs or args)``
    return v


def _check_replace(b: Budget, v: Any, a: tuple[Any, ...], k: dict[str, Any]) -> Any:
    _replaced(b, v, _arg(a, k, 0, "old", ""), _arg(a, k, 1, "new", ""), _arg(a, k, 2, "count", -1))
    return v


def _check_join(b: Budget, v: Any, a: tuple[Any, ...], k: dict[str, Any]) -> Any:
    items = list(each(v))
    if _arg(a, k, 1, "attribute", None) is None:
        _joined(b, items, _arg(a, k, 0, "d", ""))
    return items


def _check_batch(b: Budget, v: Any, a: tuple[Any, ...], k: dict[str, Any]) -> Any:
    if _arg(a, k, 1, "fill_with", None) is not None:  # pads the last batch to ``linecount``
        b.charge(8 * _int(_arg(a, k, 0, "linecount", 0)))
    return v


def _check_slice(b: Budget, v: Any, a: tuple[Any, ...], k: dict[str, Any]) -> Any:
    b.charge(8 * _int(_arg(a, k, 0, "slices", 0)))  # it loops ``slices`` times
    return v


def _check_tojson(b: Budget, v: Any, a: tuple[Any, ...], k: dict[str, Any]) -> Any:
    if _int(_arg(a, k, 0, "indent", 0)) > 16:
        raise RenderLimitError("tojson indent over 16 is not allowed in templates")
    b.charge(b.text_size(v))
    return v


def _check_sum(b: Budget, v: Any, a: tuple[Any, ...], k: dict[str, Any]) -> Any:
    if not isinstance(_arg(a, k, 1, "start", 0), int | float):
        raise RenderLimitError("sum of anything but numbers is not allowed in templates")
    return v


def _check_wordwrap(b: Budget, v: Any, a: tuple[Any, ...], k: dict[str, Any]) -> Any:
    text = str(v)
    width = max(1, _int(_arg(a, k, 0, "width", 79)))
    wrap = _arg(a, k, 2, "wrapstring", None)
    lines = text.count("\n") + 1 + len(text) // width
    b.charge(len(text) + lines * len(str(wrap or "\n")))
    return v


FILTER_CHECKS: dict[str, _Check] = {
    "center": _check_center,
    "indent": _check_indent,
    "format": _check_format_filter,
    "replace": _check_replace,
    "join": _check_join,
    "batch": _check_batch,
    "slice": _check_slice,
    "tojson": _check_tojson,
    "sum": _check_sum,
    "wordwrap": _check_wordwrap,
}


def check_method(budget: Budget, method: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Refuse or estimate a method of a str, bytes or number before it runs."""
    owner, name = getattr(method, "__self__", None), getattr(method, "__name__", "")
    if isinstance(owner, int | float):
        if name not in _NUMBER_METHODS:
            raise RenderLimitError(f"{type(owner).__name__}.{name} is not allowed in templates")
        return args
    if not isinstance(owner, str | bytes):
        return args
    if name in _TEXT_METHODS:
        return args
    size = len(owner)
    if name in ("center", "ljust", "rjust", "zfill"):
        budget.charge(max(size, _int(args[0]) if args else 0))
    elif name == "expandtabs":
        tabs = owner.count("\t") if isinstance(owner, str) else owner.count(b"\t")
        budget.charge(size + tabs * max(1, _int(args[0]) if args else 8))
    elif name == "replace" and isinstance(owner, str) and len(args) >= 2:
        _replaced(budget, owner, args[0], args[1], args[2] if len(args) > 2 else -1)
    elif name == "join" and len(args) == 1:
        items = list(each(args[0]))
        _joined(budget, items, owner)
        return (items,)
    else:
        raise RenderLimitError(f"str.{name} is not allowed in templates")
    return args


def check_times(budget: Budget, left: Any, right: Any) -> None:
    seq, n = (left, right) if isinstance(right, int) else (right, left)
    if isinstance(seq, str | bytes) and isinstance(n, int):
        budget.charge(len(seq) * max(n, 0))
    elif isinstance(seq, list | tuple) and isinstance(n, int):
        budget.charge(8 * len(seq) * max(n, 0))
    elif (
        isinstance(left, int)
        and isinstance(right, int)
        and left.bit_length() + right.bit_length() > MAX_INT_BITS
    ):
        raise RenderLimitError(f"integers over {MAX_INT_BITS:,} bits are not allowed in templates")


def check_power(base: Any, exponent: Any) -> None:
    if (
        isinstance(base, int)
        and isinstance(exponent, int)
        and abs(base) > 1
        and exponent > 0
        and base.bit_length() * exponent > MAX_INT_BITS
    ):
        raise RenderLimitError(f"integers over {MAX_INT_BITS:,} bits are not allowed in templates")
