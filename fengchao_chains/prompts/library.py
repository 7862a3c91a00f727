"""The instruction library: every prompt file, looked up by id, and clients' custom prompts.

Requests name a prompt the way the fengchao API does: ``prompt`` is either an instruction id
(``"中译英"``) or, when it is not one, a custom template that must contain ``{{ query }}``;
``prompt_fill`` fills the instruction's extra variables; ``system`` replaces the default system
description. :meth:`PromptLibrary.messages` turns that into the messages for a ChatModel,
:meth:`PromptLibrary.chat_prompt_template` into a LangChain ``ChatPromptTemplate``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from difflib import get_close_matches
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

from fengchao_chains.prompts.errors import (
    PromptError,
    PromptFileError,
    PromptRenderError,
    PromptTemplateError,
)
from fengchao_chains.prompts.files import (
    DEFAULT_PREFIX,
    QUERY_SLOT,
    SLOTS,
    SYSTEM_SLOT,
    PromptFile,
    Variable,
    default_prefix,
    parse_prompt_file,
    quoted,
)
from fengchao_chains.prompts.sandbox import (
    RenderBudget,
    RenderLimits,
    SafeTemplate,
    compile_template,
)

if TYPE_CHECKING:
    from langchain_core.prompts import ChatPromptTemplate

logger = logging.getLogger(__name__)

DEFAULT_ID = "默认"
CUSTOM_ID = "custom"
SAMPLE_QUERY = "示例问题"  # what the start-up trial render asks
CREATED_FORMAT = "%Y-%m-%d %H:%M:%S"
"""The fengchao SDK's timestamps (every ``created`` of the /aigc API), local time."""


@dataclass(frozen=True)
class RenderedPrompt:
    """A rendered prompt: the system message text (may be empty) and the user message text."""

    system: str
    user: str

    def messages(self, history: Sequence[BaseMessage] = ()) -> list[BaseMessage]:
        head: list[BaseMessage] = [SystemMessage(self.system)] if self.system else []
        return [*head, *history, HumanMessage(self.user)]


@dataclass(frozen=True)
class Instruction:
    """A prompt ready to render: a library instruction or a client's custom template."""

    id: str
    description: str
    system: str
    prefix_source: str
    prompt_source: str
    prefix: SafeTemplate = field(repr=False)
    prompt: SafeTemplate = field(repr=False)
    variables: Mapping[str, Variable] = field(default_factory=dict)
    created: datetime | None = None
    path: Path | None = None

    @property
    def is_custom(self) -> bool:
        return self.path is None

    @property
    def label(self) -> str:
        return "the custom prompt" if self.is_custom else f"prompt {self.id!r}"

    @classmethod
    def from_file(cls, prompt_file: PromptFile) -> Instruction:
        return cls(
            id=prompt_file.front.id,
            description=prompt_file.front.description,
            system=prompt_file.system,
            prefix_source=prompt_file.prefix_source,
            prompt_source=prompt_file.prompt_source,
            prefix=prompt_file.prefix,
            prompt=prompt_file.prompt,
            variables=prompt_file.front.variables,
            created=prompt_file.created,
            path=prompt_file.path,
        )

    def card(self) -> dict[str, Any]:
        """The ``GET /aigc/prompts/`` entry: the SDK's PromptCard fields (``id``, ``prefix``,
        ``prompt``, ``system``, ``created``) plus ``description`` and ``variables``."""
        return {
            "id": self.id,
            "prefix": self.prefix_source,
            "prompt": self.prompt_source,
            "system": self.system,
            "created": self.created.strftime(CREATED_FORMAT) if self.created else None,
            "description": self.description,
            "variables": {
                name: {"description": v.description, "required": v.required}
                | ({} if v.required else {"default": v.default})
                for name, v in self.variables.items()
            },
        }

    def render(
        self,
        query: str,
        *,
        limits: RenderLimits,
        system: str | None = None,
        values: Mapping[str, Any] | None = None,
    ) -> RenderedPrompt:
        """Render both messages; ``system=None`` keeps the default system description."""
        context = self._context(values or {})
        context[SYSTEM_SLOT] = self.system if system is None else system
        context[QUERY_SLOT] = query
        budget = RenderBudget(limits)  # one budget for both messages
        return RenderedPrompt(
            system=self.prefix.render(context, budget), user=self.prompt.render(context, budget)
        )

    def _context(self, values: Mapping[str, Any]) -> dict[str, Any]:
        for slot in SLOTS & set(values):
            raise PromptRenderError(
                f"prompt_fill cannot set {slot!r}; use the request's {slot!r} field"
            )
        unknown = set(values) - set(self.variables)
        if unknown:
            takes = ", ".join(sorted(self.variables)) or "no variables"
            raise PromptRenderError(
                f"{self.label} has no variable {quoted(sorted(unknown))} (it takes: {takes})"
            )
        missing = {n for n, v in self.variables.items() if v.required and n not in values}
        if missing:
            raise PromptRenderError(
                f"{self.label} needs prompt_fill to give {quoted(sorted(missing))}"
            )
        defaults = {n: v.default for n, v in self.variables.items() if not v.required}
        return defaults | dict(values)


@lru_cache(maxsize=256)
def compile_custom(source: str, limits: RenderLimits, default_system: str) -> Instruction:
    """A client's template as an instruction (compiled once per distinct source)."""
    prompt = compile_template(source, limits=limits, name=CUSTOM_ID)
    if QUERY_SLOT not in prompt.variables:
        raise PromptTemplateError(
            "a custom prompt must contain the {{ query }} slot where the question goes"
        )
    variables = {
        name: Variable(description="a variable of the custom prompt", example="")
        for name in sorted(prompt.variables - SLOTS)
    }
    return Instruction(
        id=CUSTOM_ID,
        description="a client's custom prompt template",
        system=default_system,
        prefix_source=DEFAULT_PREFIX,
        prompt_source=prompt.source,
        prefix=default_prefix(),
        prompt=prompt,
        variables=variables,
    )


def packaged_prompt_dir() -> Path:
    """The packaged library: ``_prompt_library`` in an installed wheel, else the source
    checkout's ``prompt_library/`` (editable installs)."""
    installed = resources.files("fengchao_chains").joinpath("_prompt_library")
    if installed.is_dir():
        return Path(str(installed))
    return Path(__file__).resolve().parents[2] / "prompt_library"


def load_instructions(directories: Sequence[Path], limits: RenderLimits) -> dict[str, Instruction]:
    """Every ``*.jinja`` file of ``directories`` in order (sorted by file name within a
    directory); a later directory's instruction replaces an earlier one with the same id."""
    instructions: dict[str, Instruction] = {}
    problems: list[str] = []
    for directory in directories:
        if not directory.is_dir():
            raise PromptFileError(f"prompt directory {directory} does not exist")
        seen: dict[str, Path] = {}
        for path in sorted(directory.glob("*.jinja")):
            try:
                instruction = _checked_instruction(path, limits)
            except PromptFileError as exc:
                problems.append(str(exc))
                continue
            if instruction.id in seen:
                other = seen[instruction.id]
                problems.append(f"prompt file {path}: id {instruction.id!r} is used by {other} too")
                continue
            seen[instruction.id] = path
            if instruction.id in instructions:
                logger.info("prompt %r from %s replaces the packaged one", instruction.id, path)
            instructions[instruction.id] = instruction
    if problems:
        count = f"{len(problems)} broken prompt files: " if len(problems) > 1 else ""
        raise PromptFileError(count + "; ".join(problems))
    if DEFAULT_ID not in instructions:
        raise PromptFileError(f"the prompt library has no {DEFAULT_ID!r} instruction")
    return instructions


def _checked_instruction(path: Path, limits: RenderLimits) -> Instruction:
    """The instruction of one file, rendered once with its sample values so a file that
    cannot render fails at start-up, not at a client's first request."""
    instruction = Instruction.from_file(parse_prompt_file(path, limits))
    samples = {name: variable.sample for name, variable in instruction.variables.items()}
    try:
        instruction.render(SAMPLE_QUERY, limits=limits, values=samples)
    except PromptError as exc:
        raise PromptFileError(f"prompt file {path}: {exc}") from None
    return instruction


class PromptLibrary(Mapping[str, Instruction]):
    """The loaded instructions by id, in file order; :meth:`reload` re-reads the files."""

    def __init__(
        self, directories: Sequence[Path] | None = None, limits: RenderLimits | None = None
    ) -> None:
        self.directories = [packaged_prompt_dir()] if directories is None else list(directories)
        self.limits = limits or RenderLimits()
        self._instructions = load_instructions(self.directories, self.limits)
        self._lock = threading.Lock()

    def reload(self) -> None:
        """Re-read every file; on any error the library keeps its current instructions."""
        with self._lock:
            self._instructions = load_instructions(self.directories, self.limits)

    def __getitem__(self, prompt_id: str) -> Instruction:
        return self._instructions[prompt_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._instructions)

    def __len__(self) -> int:
        return len(self._instructions)

    @property
    def default(self) -> Instruction:
        return self._instructions[DEFAULT_ID]

    def cards(self) -> list[dict[str, Any]]:
        return [instruction.card() for instruction in self._instructions.values()]

    def close_matches(self, prompt_id: str, limit: int = 3) -> list[str]:
        return get_close_matches(prompt_id.strip(), list(self._instructions), n=limit, cutoff=0.5)

    def unknown(self, prompt_id: str) -> str:
        """``unknown prompt 'x'`` with the closest ids, best first, for an error message."""
        matches = self.close_matches(prompt_id)
        hint = f"; did you mean {quoted(matches)}?" if matches else ""
        return f"unknown prompt {prompt_id!r}{hint}"

    def resolve(self, prompt: str | None) -> Instruction:
        """An instruction id, else a custom template; ``None`` or blank is the default."""
        if prompt is None or not prompt.strip():
            return self.default
        instruction = self._instructions.get(prompt)
        if instruction is not None:
            return instruction
        try:
            return compile_custom(prompt, self.limits, self.default.system)
        except PromptTemplateError as exc:
            if self.close_matches(prompt) and "{{" not in prompt and "<<" not in prompt:
                raise PromptTemplateError(
                    f"{self.unknown(prompt)} (a custom prompt is a template with the"
                    " {{ query }} slot)"
                ) from None
            raise exc from None

    def render(
        self,
        query: str,
        *,
        prompt: str | None = None,
        system: str | None = None,
        prompt_fill: Mapping[str, Any] | None = None,
    ) -> RenderedPrompt:
        return self.resolve(prompt).render(
            query, limits=self.limits, system=system, values=prompt_fill
        )

    def messages(
        self,
        query: str,
        *,
        prompt: str | None = None,
        system: str | None = None,
        prompt_fill: Mapping[str, Any] | None = None,
        history: Iterable[Mapping[str, Any] | BaseMessage] = (),
    ) -> list[BaseMessage]:
        """The messages for a ChatModel: system, then ``history``, then the user message."""
        past = history_messages(history)
        rendered = self.render(query, prompt=prompt, system=system, prompt_fill=prompt_fill)
        return rendered.messages(past)

    def chat_prompt_template(self, prompt: str | None = None) -> ChatPromptTemplate:
        """A LangChain ``ChatPromptTemplate`` for an instruction id (or custom template):
        system message, optional ``history`` placeholder, user message."""
        from fengchao_chains.prompts.templates import chat_prompt_template

        return chat_prompt_template(self.resolve(prompt), self.limits)


_ROLES: dict[str, type[BaseMessage]] = {
    "user": HumanMessage,
    "human": HumanMessage,
    "assistant": AIMessage,
    "ai": AIMessage,
    "system": SystemMessage,
}


def history_messages(history: Iterable[Mapping[str, Any] | BaseMessage]) -> list[BaseMessage]:
    """The API's ``history`` (``[{"role": "user", "content": ...}, ...]``) as messages."""
    messages: list[BaseMessage] = []
    for index, item in enumerate(history or ()):
        if isinstance(item, BaseMessage):
            messages.append(item)
            continue
        role = item.get("role") if isinstance(item, Mapping) else None
        content = item.get("content") if isinstance(item, Mapping) else None
        if role not in _ROLES or not isinstance(content, str):
            raise PromptRenderError(
                f"history[{index}] must be {{'role': 'user' | 'assistant' | 'system',"
                " 'content': <text>}"
            )
        messages.append(_ROLES[role](content))
    return messages
