"""Metadata filters compiled to SQL: a whitelist of operators, every value bound.

A filter is a dict in the style of langchain-postgres and Chroma::

    {"source": "示例日报"}                                   # equality
    {"published_at": {"$gte": "2024-01-01"}, "category": {"$in": ["科技", "财经"]}}
    {"$or": [{"source": "A"}, {"title": {"$ilike": "%北京%"}}]}

Field names and values are bound parameters (``metadata -> %(f0)s``), never spliced into
the SQL text.  Comparisons are between jsonb values, so numbers compare as numbers and
strings (ISO 8601 dates included) as strings, and a field of another type never makes the
query fail.  ``document_id`` and ``position`` refer to the chunk's own columns.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from psycopg import sql
from psycopg.types.json import Jsonb

from fengchao_chains.retrievers.errors import InvalidFilterError

_COMPARISONS = {"$eq": "=", "$ne": "<>", "$lt": "<", "$lte": "<=", "$gt": ">", "$gte": ">="}
_COLUMNS = {"document_id", "position"}
OPERATORS = sorted({*_COMPARISONS, "$in", "$nin", "$like", "$ilike", "$exists"})


@dataclass
class CompiledFilter:
    """A WHERE clause (without ``WHERE``) and its named parameters."""

    clause: sql.Composable
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Compiler:
    table: sql.Composable  # an alias or table identifier, to qualify the columns
    params: dict[str, Any] = field(default_factory=dict)

    def bind(self, value: Any) -> sql.Placeholder:
        name = f"f{len(self.params)}"
        self.params[name] = value
        return sql.Placeholder(name)

    def compile(self, node: Any) -> sql.Composable:
        if not isinstance(node, Mapping) or not node:
            raise InvalidFilterError(f"a filter must be a non-empty object, got {node!r}")
        parts = [self.entry(str(key), value) for key, value in node.items()]
        return parts[0] if len(parts) == 1 else _join(parts, "AND")

    def entry(self, key: str, value: Any) -> sql.Composable:
        if key in ("$and", "$or"):
            if not isinstance(value, list) or not value:
                raise InvalidFilterError(f"{key} takes a non-empty list of filters")
            return _join([self.compile(item) for item in value], key[1:].upper())
        if key == "$not":
            return sql.SQL("NOT ({})").format(self.compile(value))
        if key.startswith("$"):
            raise InvalidFilterError(f"unknown filter operator {key!r} at the top level")
        if isinstance(value, Mapping):
            if not value:
                raise InvalidFilterError(f"the condition on {key!r} is empty")
            return _join([self.condition(key, op, arg) for op, arg in value.items()], "AND")
        return self.condition(key, "$eq", value)

    def condition(self, key: str, op: str, arg: Any) -> sql.Composable:
        build = _BUILDERS.get(op)
        if build is None:
            raise InvalidFilterError(
                f"unknown filter operator {op!r} on {key!r} (known: {', '.join(OPERATORS)})"
            )
        return build(self, key, arg)

    # ------------------------------------------------------------ field references ----
    def as_json(self, key: str) -> sql.Composable:
        if key in _COLUMNS:
            return sql.SQL("to_jsonb({}.{})").format(self.table, sql.Identifier(key))
        return sql.SQL("({}.metadata -> {})").format(self.table, self.bind(key))

    def as_text(self, key: str) -> sql.Composable:
        if key in _COLUMNS:
            return sql.SQL("{}.{}::text").format(self.table, sql.Identifier(key))
        return sql.SQL("({}.metadata ->> {})").format(self.table, self.bind(key))


def _scalar(op: str, key: str, arg: Any) -> Any:
    if isinstance(arg, Mapping | list | tuple | set):
        raise InvalidFilterError(f"{op} on {key!r} takes a single value, got {arg!r}")
    return arg


def _compare(c: _Compiler, key: str, op: str, arg: Any) -> sql.Composable:
    value = Jsonb(_scalar(op, key, arg))
    return sql.SQL("{} {} {}::jsonb").format(
        c.as_json(key), sql.SQL(_COMPARISONS[op]), c.bind(value)
    )


def _membership(c: _Compiler, key: str, op: str, arg: Any) -> sql.Composable:
    if not isinstance(arg, list | tuple) or not arg:
        raise InvalidFilterError(f"{op} on {key!r} takes a non-empty list")
    values = [Jsonb(_scalar(op, key, item)) for item in arg]
    test = sql.SQL("{} = ANY({}::jsonb[])").format(c.as_json(key), c.bind(values))
    if op == "$in":
        return test
    return sql.SQL("({} IS NULL OR NOT {})").format(c.as_json(key), test)


def _like(c: _Compiler, key: str, op: str, arg: Any) -> sql.Composable:
    if not isinstance(arg, str):
        raise InvalidFilterError(f"{op} on {key!r} takes a string pattern")
    keyword = sql.SQL("LIKE" if op == "$like" else "ILIKE")
    return sql.SQL("{} {} {}").format(c.as_text(key), keyword, c.bind(arg))


def _exists(c: _Compiler, key: str, op: str, arg: Any) -> sql.Composable:
    if not isinstance(arg, bool):
        raise InvalidFilterError(f"$exists on {key!r} takes true or false")
    if key in _COLUMNS:
        return sql.SQL("TRUE" if arg else "FALSE")
    test = sql.SQL("{}.metadata ? {}").format(c.table, c.bind(key))
    return test if arg else sql.SQL("NOT ({})").format(test)


_Builder = Callable[[_Compiler, str, Any], sql.Composable]
_BUILDERS: dict[str, _Builder] = {
    **{
        op: (lambda c, key, arg, op=op: _compare(c, key, op, arg))  # type: ignore[misc]
        for op in _COMPARISONS
    },
    "$in": lambda c, key, arg: _membership(c, key, "$in", arg),
    "$nin": lambda c, key, arg: _membership(c, key, "$nin", arg),
    "$like": lambda c, key, arg: _like(c, key, "$like", arg),
    "$ilike": lambda c, key, arg: _like(c, key, "$ilike", arg),
    "$exists": lambda c, key, arg: _exists(c, key, "$exists", arg),
}


def _join(parts: list[sql.Composable], keyword: str) -> sql.Composable:
    return sql.SQL("(") + sql.SQL(f" {keyword} ").join(parts) + sql.SQL(")")


def compile_filter(
    node: Mapping[str, Any] | None, table: sql.Composable, *, prefix: str = ""
) -> CompiledFilter:
    """Compile a filter on rows of ``table`` (an alias); None or {} means no filter."""
    if not node:
        return CompiledFilter(sql.SQL("TRUE"))
    compiler = _Compiler(table)
    clause = compiler.compile(node)
    return CompiledFilter(clause, compiler.params)
