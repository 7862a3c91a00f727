"""The Jinja sandbox every prompt template renders in: library files and client templates.

Clients may send their own template, so rendering must be safe against hostile input, not
just against mistakes. Three layers do that:

1. **Before it runs**, the parsed template is checked against an allow-list of constructs:
   output, ``if``, ``for``, ``set``, ``with``, literals, operators, attribute and item access
   and a fixed list of filters. Anything else (macros, calls, includes, imports, recursive
   loops, attributes starting with ``_``) is refused with the line it is on. With no calls
   and no macros, the only way to do unbounded work is a loop.
2. **While it runs**, it is a Jinja ``ImmutableSandboxedEnvironment`` with no globals and
   undefined variables as errors. Every loop draws on an iteration budget and checks the
   deadline at each step; every operation that can grow a value (``*``, ``**``, ``+``,
   ``~``, ``join``, ``replace``) checks the size of its result *before* building it; output is
   counted as it streams.
3. **Data is never code**: values (the query, the system text, ``prompt_fill``) are only ever
   passed in as variables; nothing a client sends as a value is compiled.

A template that breaks a rule raises :class:`PromptTemplateError`; a render that hits a limit
or an undefined variable raises :class:`PromptRenderError`. Both are the API's code 445.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import jinja2
from jinja2 import meta, nodes
from jinja2.exceptions import SecurityError
from jinja2.filters import FILTERS, make_attrgetter
from jinja2.sandbox import ImmutableSandboxedEnvironment

from fengchao_chains.prompts.errors import PromptRenderError, PromptTemplateError

SLOT_ALIAS = re.compile(r"<<\s*([A-Za-z_][A-Za-z0-9_]*)\s*>>")
"""``<<query>>``, the design card's spelling of a slot, is accepted as ``{{ query }}``."""

ALLOWED_FILTERS = (
    "abs", "capitalize", "count", "d", "default", "dictsort", "first", "float", "int", "items",
    "join", "last", "length", "list", "lower", "map", "max", "min", "reject", "rejectattr",
    "replace", "reverse", "round", "select", "selectattr", "sort", "string", "sum", "title",
    "trim", "truncate", "unique", "upper", "wordcount",
)  # fmt: skip
"""Filters whose output is bounded by their input (``join`` and ``replace`` are checked).
Left out on purpose: ``format``, ``center``, ``indent``, ``batch``, ``slice`` (an argument
sizes the output), ``tojson`` and ``urlencode`` (not prompt text), ``attr`` and ``random``."""

_ALLOWED_NODES: tuple[type[nodes.Node], ...] = (
    nodes.Template, nodes.Output, nodes.TemplateData, nodes.If, nodes.For, nodes.With,
    nodes.Assign, nodes.AssignBlock, nodes.FilterBlock, nodes.Name, nodes.Const, nodes.Tuple,
    nodes.List, nodes.Dict, nodes.Pair, nodes.Keyword, nodes.CondExpr, nodes.Filter,
    nodes.Test, nodes.Getitem, nodes.Getattr, nodes.Slice, nodes.Concat, nodes.Compare,
    nodes.Operand, nodes.Add, nodes.Sub, nodes.Mul, nodes.Div, nodes.FloorDiv, nodes.Mod,
    nodes.Pow, nodes.And, nodes.Or, nodes.Not, nodes.Neg, nodes.Pos,
)  # fmt: skip

_CONSTRUCT_NAMES = {
    "Call": "function or method calls",
    "Macro": "macros",
    "CallBlock": "call blocks",
    "Include": "include",
    "Import": "import",
    "FromImport": "import",
    "Extends": "extends",
    "Block": "blocks",
}
_RESERVED_NAMES = frozenset({"self", "caller", "varargs", "kwargs"})

_MAX_INT_BITS = 4096
_ITERATE_FILTER = "_fengchao_iterate"
_CONCAT_FILTER = "_fengchao_concat"


@dataclass(frozen=True)
class RenderLimits:
    """How much one prompt render may take (system and user message together)."""

    max_chars: int = 200_000
    timeout: float = 0.5
    max_iterations: int = 10_000
    max_template_chars: int = 20_000


@dataclass
class RenderBudget:
    """What is left of the limits during one render; shared by the templates it renders."""

    limits: RenderLimits
    deadline: float = field(init=False)
    iterations: int = field(init=False)
    chars: int = field(init=False)

    def __post_init__(self) -> None:
        self.deadline = time.monotonic() + self.limits.timeout
        self.iterations = self.limits.max_iterations
        self.chars = self.limits.max_chars

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise PromptRenderError(
                f"the prompt took longer than {self.limits.timeout:g} s to render"
            )

    def check_size(self, size: int) -> None:
        if size > self.limits.max_chars:
            raise PromptRenderError(
                f"the prompt would be longer than {self.limits.max_chars} characters"
            )

    def step(self) -> None:
        self.iterations -= 1
        if self.iterations < 0:
            raise PromptRenderError(
                f"the prompt's loops ran more than {self.limits.max_iterations} times"
            )
        self.check_time()

    def emit(self, text: str) -> None:
        self.chars -= len(text)
        if self.chars < 0:
            raise PromptRenderError(
                f"the rendered prompt is longer than {self.limits.max_chars} characters"
            )
        self.check_time()


_current_budget: ContextVar[RenderBudget | None] = ContextVar("prompt_budget", default=None)


def _budget() -> RenderBudget:
    budget = _current_budget.get()
    if budget is None:  # only reachable if a compiled template is rendered outside render()
        raise PromptRenderError("prompt templates render only through SafeTemplate.render")
    return budget


def _size(value: Any) -> int | None:
    return len(value) if isinstance(value, str | list | tuple) else None


class PromptEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox: no globals, allow-listed filters, size-checked growing operators."""

    intercepted_binops = frozenset({"+", "*", "**", "%", "/", "//", "-"})

    def __init__(self) -> None:
        super().__init__(
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=False,
            autoescape=False,
        )
        self.globals.clear()
        self.filters = {name: FILTERS[name] for name in ALLOWED_FILTERS}
        self.filters["join"] = _checked_join
        self.filters["replace"] = _checked_replace
        self.filters[_ITERATE_FILTER] = _iterate
        self.filters[_CONCAT_FILTER] = _concat

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        budget = _budget()
        if operator == "%" and isinstance(left, str):
            raise PromptRenderError("string formatting with % is not allowed in prompts")
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                size = _size(seq)
                if size is not None and isinstance(times, int):
                    budget.check_size(size * max(times, 0))
            if isinstance(left, int) and isinstance(right, int):
                _check_int_bits(left.bit_length() + right.bit_length())
        elif operator == "**" and isinstance(left, int) and isinstance(right, int):
            _check_int_bits(max(left.bit_length(), 1) * max(right, 0))
        elif operator == "+":
            left_size, right_size = _size(left), _size(right)
            if left_size is not None and right_size is not None:
                budget.check_size(left_size + right_size)
        try:
            return self.binop_table[operator](left, right)
        except (ArithmeticError, TypeError, ValueError) as exc:
            raise PromptRenderError(f"cannot compute {operator!r}: {exc}") from None


def _check_int_bits(bits: int) -> None:
    if bits > _MAX_INT_BITS:
        raise PromptRenderError("a number in the prompt would be too large")


def _iterate(iterable: Any) -> Iterator[Any]:
    """Wraps the iterable of every ``for`` loop: one budget step per item."""
    budget = _budget()
    for item in iterable:
        budget.step()
        yield item


def _concat(parts: list[Any]) -> str:
    """The ``~`` operator, with its result size checked before it is built."""
    texts = [str(part) for part in parts]
    _budget().check_size(sum(map(len, texts)))
    return "".join(texts)


@jinja2.pass_environment
def _checked_join(
    environment: Any, value: Iterable[Any], d: str = "", attribute: str | int | None = None
) -> str:
    if attribute is not None:
        value = map(make_attrgetter(environment, attribute), value)
    texts = [str(item) for item in value]
    separator = str(d)
    _budget().check_size(sum(map(len, texts)) + len(separator) * max(len(texts) - 1, 0))
    return separator.join(texts)


def _checked_replace(value: Any, old: Any, new: Any, count: int | None = None) -> str:
    text, old, new = str(value), str(old), str(new)
    hits = text.count(old) if old else len(text) + 1
    if count is not None and count >= 0:
        hits = min(hits, count)
    _budget().check_size(len(text) + hits * max(len(new) - len(old), 0))
    return text.replace(old, new, -1 if count is None else count)


ENVIRONMENT = PromptEnvironment()


class _BudgetTransform:
    """Rewrites the parsed template so loops and ``~`` go through the checked filters."""

    def visit(self, node: nodes.Node) -> None:
        for child in node.iter_child_nodes():
            self.visit(child)
        if isinstance(node, nodes.For):
            node.iter = nodes.Filter(node.iter, _ITERATE_FILTER, [], [], None, None)
            node.iter.set_lineno(node.lineno)
        for name, value in node.iter_fields():
            if isinstance(value, nodes.Concat):
                setattr(node, name, _checked_concat(value))
            elif isinstance(value, list):
                setattr(
                    node,
                    name,
                    [_checked_concat(v) if isinstance(v, nodes.Concat) else v for v in value],
                )


def _checked_concat(node: nodes.Concat) -> nodes.Filter:
    wrapped = nodes.Filter(nodes.List(node.nodes), _CONCAT_FILTER, [], [], None, None)
    wrapped.set_lineno(node.lineno)
    return wrapped


def _refuse(node: nodes.Node, what: str, line_offset: int) -> PromptTemplateError:
    return PromptTemplateError(
        f"line {node.lineno + line_offset}: prompt templates may not use {what}"
    )


def _check_allowed(tree: nodes.Template, line_offset: int) -> None:
    for node in tree.find_all(nodes.Node):
        if not isinstance(node, _ALLOWED_NODES):
            name = type(node).__name__
            raise _refuse(node, _CONSTRUCT_NAMES.get(name, f"'{name}'"), line_offset)
        if isinstance(node, nodes.Name) and (
            node.name in _RESERVED_NAMES or node.name.startswith("_")
        ):
            raise _refuse(node, f"the name {node.name!r}", line_offset)
        if isinstance(node, nodes.For) and node.recursive:
            raise _refuse(node, "a recursive loop", line_offset)
        if isinstance(node, nodes.Getattr) and node.attr.startswith("_"):
            raise _refuse(node, f"the attribute {node.attr!r}", line_offset)
        key = (
            node.arg.value
            if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const)
            else None
        )
        if isinstance(key, str) and key.startswith("_"):
            raise _refuse(node, f"the item {key!r}", line_offset)
        if isinstance(node, nodes.Filter | nodes.Test):
            for arg in [*node.args, *(kw.value for kw in node.kwargs)]:
                if isinstance(arg, nodes.Const) and _names_internal(arg.value):
                    raise _refuse(node, f"the argument {arg.value!r}", line_offset)
        if isinstance(node, nodes.Filter | nodes.FilterBlock):
            filters = [node] if isinstance(node, nodes.Filter) else [node.filter]
            for item in filters:
                if item.name not in ALLOWED_FILTERS:
                    raise PromptTemplateError(
                        f"line {item.lineno + line_offset}: prompt templates may not use the"
                        f" filter {item.name!r} (allowed: {', '.join(ALLOWED_FILTERS)})"
                    )


def _names_internal(value: Any) -> bool:
    """A filter argument naming an attribute path (``map(attribute='a.__class__')``) or a
    filter (``map('_x')``) that starts with an underscore."""
    return isinstance(value, str) and any(part.startswith("_") for part in value.split("."))


def template_names(tree: nodes.Template) -> set[str]:
    """The variables a parsed template reads from its caller."""
    return set(meta.find_undeclared_variables(tree))


@dataclass(frozen=True)
class SafeTemplate:
    """A prompt template that passed the checks, compiled once, rendered many times."""

    source: str
    variables: frozenset[str]
    _render: Callable[..., Iterator[str]] = field(repr=False, compare=False)
    slot: str | None = None
    """The variable the template is made of alone (``{{ name }}``), if it is: then a string
    value renders as itself, without Jinja (the library's default instruction is two such
    blocks, and Jinja's first render after an idle spell cost /aigc 0.05 ms at c=1,
    docs/benchmarks.md, change 37). Any other value goes through Jinja as before."""

    def render(self, values: Mapping[str, Any], budget: RenderBudget) -> str:
        """Render with ``values``; raises :class:`PromptRenderError` on any failure."""
        if self.slot is not None and isinstance(value := values.get(self.slot), str):
            budget.emit(value)
            return value.strip()
        token = _current_budget.set(budget)
        parts: list[str] = []
        try:
            for part in self._render(values):
                budget.emit(part)
                parts.append(part)
        except PromptRenderError:
            raise
        except SecurityError as exc:
            raise PromptRenderError(f"the prompt template did something unsafe: {exc}") from None
        except jinja2.UndefinedError as exc:
            raise PromptRenderError(f"the prompt template failed: {exc}") from None
        except (RecursionError, MemoryError):
            raise PromptRenderError("the prompt template is too complex to render") from None
        except Exception as exc:  # a client value of the wrong type, a bad filter argument
            raise PromptRenderError(
                f"the prompt template failed: {type(exc).__name__}: {exc}"
            ) from None
        finally:
            _current_budget.reset(token)
        return "".join(parts).strip()


def compile_template(
    source: str, *, limits: RenderLimits, name: str = "prompt", line_offset: int = 0
) -> SafeTemplate:
    """Parse, check and compile ``source``; ``line_offset`` shifts reported line numbers (for a
    block inside a file)."""
    if len(source) > limits.max_template_chars:
        raise PromptTemplateError(
            f"the prompt template is longer than {limits.max_template_chars} characters"
        )
    source = SLOT_ALIAS.sub(r"{{ \1 }}", source)
    try:
        tree = ENVIRONMENT.parse(source, name=name)
    except jinja2.TemplateSyntaxError as exc:
        line = (exc.lineno or 1) + line_offset
        raise PromptTemplateError(f"line {line}: {exc.message}") from None
    _check_allowed(tree, line_offset)
    variables = frozenset(template_names(tree))
    slot = _single_slot(tree)
    _BudgetTransform().visit(tree)
    try:
        code = ENVIRONMENT.compile(tree, name=name)
    except jinja2.TemplateError as exc:  # e.g. assigning to a reserved name
        raise PromptTemplateError(f"{getattr(exc, 'message', exc)}") from None
    template = ENVIRONMENT.template_class.from_code(
        ENVIRONMENT, code, ENVIRONMENT.make_globals(None), None
    )
    return SafeTemplate(source=source, variables=variables, _render=template.generate, slot=slot)


def _single_slot(tree: nodes.Template) -> str | None:
    """The variable a parsed template consists of and nothing else (``{{ name }}``)."""
    if len(tree.body) != 1 or not isinstance(output := tree.body[0], nodes.Output):
        return None
    if len(output.nodes) != 1 or not isinstance(name := output.nodes[0], nodes.Name):
        return None
    return name.name
