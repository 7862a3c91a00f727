"""One instruction file of the library: parsed, checked and compiled.

A file is TOML front matter in the leading Jinja comment, then up to three blocks::

    {#
    id = "标题生成器"
    description = "为文章拟标题"

    [variables.count]
    description = "标题个数"
    default = 5
    #}
    {% block system %}你是一位资深编辑……{% endblock %}
    {% block prefix %}{{ system }}{% endblock %}
    {% block prompt %}请为下面的文章拟 {{ count }} 个标题：{{ query }}{% endblock %}

``system`` is static text (the instruction's default system description), ``prefix`` renders
the system message around the ``{{ system }}`` slot (default: just the slot), ``prompt``
renders the user message and must contain the ``{{ query }}`` slot. Every problem is reported
with the file and line, so a broken file stops start-up with a message that says where.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fengchao_chains.prompts.errors import PromptError, PromptFileError
from fengchao_chains.prompts.sandbox import (
    ENVIRONMENT,
    RenderBudget,
    RenderLimits,
    SafeTemplate,
    compile_template,
)
from fengchao_chains.settings import describe_validation_error

SYSTEM_SLOT = "system"
QUERY_SLOT = "query"
SLOTS = frozenset({SYSTEM_SLOT, QUERY_SLOT})
DEFAULT_PREFIX = "{{ system }}"

_FRONT_MATTER = re.compile(r"\A\s*\{#-?(.*?)-?#\}", re.S)
_BLOCK = re.compile(r"\{%-?\s*block\s+(\w+)\s*-?%\}(.*?)\{%-?\s*endblock(?:\s+\w+)?\s*-?%\}", re.S)
_PARTS = ("system", "prefix", "prompt")
_VARIABLE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
_RESERVED = SLOTS | {"loop", "self", "true", "false", "none", "True", "False", "None"}


class Variable(BaseModel):
    """An extra variable an instruction takes (filled from the request's ``prompt_fill``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = Field(min_length=1)
    default: Any = None
    example: Any = None

    @property
    def required(self) -> bool:
        return "default" not in self.model_fields_set

    @property
    def sample(self) -> Any:
        """The value a trial render uses: the example, else the default."""
        return self.example if "example" in self.model_fields_set else self.default


class FrontMatter(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=64)
    description: str = Field(min_length=1, max_length=200)
    variables: dict[str, Variable] = Field(default_factory=dict)

    @field_validator("id", "description")
    @classmethod
    def _one_clean_line(cls, value: str) -> str:
        if value != value.strip() or "\n" in value:
            raise ValueError("must be one line without leading or trailing spaces")
        return value

    @field_validator("variables")
    @classmethod
    def _names(cls, value: dict[str, Variable]) -> dict[str, Variable]:
        for name, variable in value.items():
            if not _VARIABLE_NAME.match(name) or name in _RESERVED:
                raise ValueError(f"{name!r} cannot be a variable name (letters, digits, _;"
                                 f" not {', '.join(sorted(_RESERVED))})")  # fmt: skip
            if variable.required and "example" not in variable.model_fields_set:
                raise ValueError(f"{name!r} has no default, so it needs an example")
        return value


@dataclass(frozen=True)
class PromptFile:
    """A checked instruction file, its parts compiled in the sandbox."""

    path: Path
    front: FrontMatter
    system: str
    prefix_source: str
    prompt_source: str
    prefix: SafeTemplate
    prompt: SafeTemplate
    created: datetime


def parse_prompt_file(path: Path, limits: RenderLimits) -> PromptFile:
    """Read, check and compile one file; every problem is a :class:`PromptFileError` that
    names ``path`` and, where there is one, the line."""
    try:
        source = path.read_text(encoding="utf-8")
        created = datetime.fromtimestamp(path.stat().st_mtime).astimezone()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise PromptFileError(f"prompt file {path} cannot be read: {reason}") from None
    try:
        return _parse(path, source, created, limits)
    except PromptError as exc:
        raise PromptFileError(f"prompt file {path}: {exc}") from None


def _parse(path: Path, source: str, created: datetime, limits: RenderLimits) -> PromptFile:
    front = _front_matter(path, source)
    _check_syntax(path, source)
    blocks = _blocks(path, source)
    # Library files may be longer than client templates.
    file_limits = dataclasses.replace(
        limits, max_template_chars=max(limits.max_template_chars, len(source))
    )

    def compiled(part: str) -> tuple[str, SafeTemplate, int]:
        if part not in blocks:
            if part != "prefix":
                raise _at(path, 1, f"has no {{% block {part} %}}")
            return DEFAULT_PREFIX, default_prefix(), 1
        text, offset = blocks[part]
        template = compile_template(
            text, limits=file_limits, name=f"{path.name}:{part}", line_offset=offset
        )
        return text.strip(), template, offset + 1

    _, system_template, system_line = compiled("system")
    if system_template.variables:
        names = ", ".join(sorted(system_template.variables))
        raise _at(path, system_line, f"the system block must be plain text (it uses {names})")
    prefix_source, prefix, prefix_line = compiled("prefix")
    prompt_source, prompt, prompt_line = compiled("prompt")
    if QUERY_SLOT not in prompt.variables:
        raise _at(path, prompt_line, "the prompt block has no {{ query }} slot")
    if SYSTEM_SLOT not in prefix.variables:
        raise _at(path, prefix_line, "the prefix block has no {{ system }} slot")
    declared = set(front.variables)
    for line, template in ((prefix_line, prefix), (prompt_line, prompt)):
        undeclared = template.variables - declared - SLOTS
        if undeclared:
            raise _at(
                path, line, f"uses {quoted(sorted(undeclared))}, not declared in the front matter"
            )
    unused = declared - prefix.variables - prompt.variables
    if unused:
        raise _at(path, 1, f"declares {quoted(sorted(unused))} but never uses it")
    system = system_template.render({}, RenderBudget(limits))
    return PromptFile(
        path=path,
        front=front,
        system=system,
        prefix_source=prefix_source,
        prompt_source=prompt_source,
        prefix=prefix,
        prompt=prompt,
        created=created,
    )


def _at(path: Path, line: int, message: str) -> PromptFileError:
    return PromptFileError(f"prompt file {path}: line {line}: {message}")


def quoted(names: Iterable[str]) -> str:
    """``'a', 'b'``: names for a message, in the order given."""
    return ", ".join(repr(name) for name in names)


@lru_cache(maxsize=1)
def default_prefix() -> SafeTemplate:
    """The prefix of files without a prefix block and of custom prompts, compiled once."""
    return compile_template(DEFAULT_PREFIX, limits=RenderLimits())


def _front_matter(path: Path, source: str) -> FrontMatter:
    match = _FRONT_MATTER.match(source)
    if not match:
        raise _at(path, 1, "must start with a {# ... #} comment holding its TOML front matter")
    line_offset = source[: match.start(1)].count("\n")
    try:
        data = tomllib.loads(match.group(1))
    except tomllib.TOMLDecodeError as exc:
        line = re.search(r"line (\d+)", str(exc))
        where = int(line.group(1)) + line_offset if line else 1
        raise _at(path, where, f"front matter is not valid TOML: {exc}") from None
    try:
        return FrontMatter.model_validate(data)
    except ValidationError as exc:
        raise PromptFileError(describe_validation_error(exc, f"prompt file {path}")) from None


def _check_syntax(path: Path, source: str) -> None:
    try:
        ENVIRONMENT.parse(source, name=path.name)
    except jinja2.TemplateSyntaxError as exc:
        raise _at(path, exc.lineno or 1, exc.message or "syntax error") from None


def _blocks(path: Path, source: str) -> dict[str, tuple[str, int]]:
    """Each block's raw text and the number of lines before it."""
    blocks: dict[str, tuple[str, int]] = {}
    end_of_front = _FRONT_MATTER.match(source)
    position = end_of_front.end() if end_of_front else 0
    for match in _BLOCK.finditer(source, position):
        name = match.group(1)
        line = source[: match.start()].count("\n") + 1
        _check_nothing_between(path, source, position, match.start())
        if name not in _PARTS:
            raise _at(path, line, f"unknown block {name!r} (blocks: {', '.join(_PARTS)})")
        if name in blocks:
            raise _at(path, line, f"a second {name!r} block")
        blocks[name] = (match.group(2), source[: match.start(2)].count("\n"))
        position = match.end()
    _check_nothing_between(path, source, position, len(source))
    return blocks


def _check_nothing_between(path: Path, source: str, start: int, end: int) -> None:
    """Text between blocks would be silently ignored, so it is an error (at its line)."""
    between = source[start:end]
    if between.strip():
        stray = start + len(between) - len(between.lstrip())
        raise _at(path, source[:stray].count("\n") + 1, "text outside the blocks")
