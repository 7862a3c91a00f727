"""Instructions as LangChain prompt templates.

The messages render with the same sandboxed, compiled templates as the ``/aigc`` path (not
LangChain's own ``jinja2`` format, which neither checks templates nor treats undefined
variables as errors), so a chain and the API produce the same text for the same input.
"""

from __future__ import annotations

from typing import Any

from langchain_core.prompts import (
    ChatPromptTemplate,
    HumanMessagePromptTemplate,
    MessagesPlaceholder,
    StringPromptTemplate,
    SystemMessagePromptTemplate,
)
from langchain_core.runnables import RunnableConfig
from langchain_core.utils.pydantic import create_model_v2
from pydantic import BaseModel, ConfigDict, Field

from fengchao_chains.prompts.files import SYSTEM_SLOT
from fengchao_chains.prompts.library import Instruction
from fengchao_chains.prompts.sandbox import RenderBudget, RenderLimits, SafeTemplate

HISTORY = "history"


class SandboxedPromptTemplate(StringPromptTemplate):
    """A string prompt rendered by a :class:`SafeTemplate` within :class:`RenderLimits`."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    template: str
    compiled: SafeTemplate = Field(exclude=True)
    limits: RenderLimits = Field(default_factory=RenderLimits, exclude=True)

    @classmethod
    def from_compiled(cls, compiled: SafeTemplate, limits: RenderLimits) -> SandboxedPromptTemplate:
        return cls(
            template=compiled.source,
            compiled=compiled,
            limits=limits,
            input_variables=sorted(compiled.variables),
        )

    @property
    def _prompt_type(self) -> str:
        return "fengchao-sandboxed-jinja"

    def format(self, **kwargs: Any) -> str:
        values = self._merge_partial_and_user_variables(**kwargs)
        return self.compiled.render(values, RenderBudget(self.limits))


class InstructionPromptTemplate(ChatPromptTemplate):
    """An instruction's chat prompt. Its input schema gives each optional input its real
    default (the system text, a variable's default, an empty history), which is what
    LangServe's playground shows and sends; an optional input given as ``None`` counts as
    not given."""

    def get_input_schema(self, config: RunnableConfig | None = None) -> type[BaseModel]:
        defaults: dict[str, Any] = {**self.partial_variables, HISTORY: []}
        fields: dict[str, Any] = {
            name: (self.input_types.get(name, str), ...) for name in self.input_variables
        }
        for name in self.optional_variables:
            fields[name] = (self.input_types.get(name, str), defaults.get(name))
        return create_model_v2("PromptInput", field_definitions=fields)

    def _validate_input(self, inner_input: Any) -> dict[str, Any]:
        if isinstance(inner_input, dict):
            optional = set(self.optional_variables)
            inner_input = {
                k: v for k, v in inner_input.items() if v is not None or k not in optional
            }
        return super()._validate_input(inner_input)


def chat_prompt_template(instruction: Instruction, limits: RenderLimits) -> ChatPromptTemplate:
    """System message (the prefix around the system text), an optional ``history`` of
    earlier messages, then the user message. ``query`` and required variables are inputs;
    ``system`` and variables with defaults are optional inputs."""
    defaults = {n: v.default for n, v in instruction.variables.items() if not v.required}
    # ChatPromptTemplate's own __init__ derives input_variables, which mypy cannot see.
    template = InstructionPromptTemplate(  # type: ignore[call-arg]
        messages=[
            SystemMessagePromptTemplate(
                prompt=SandboxedPromptTemplate.from_compiled(instruction.prefix, limits)
            ),
            MessagesPlaceholder(HISTORY, optional=True),
            HumanMessagePromptTemplate(
                prompt=SandboxedPromptTemplate.from_compiled(instruction.prompt, limits)
            ),
        ],
        partial_variables={SYSTEM_SLOT: instruction.system, **defaults},
    )
    # Partial variables are invisible in LangChain's input schema; list them as optional so
    # the LangServe playground and `get_input_jsonschema()` show them.
    template.optional_variables = sorted({*template.optional_variables, SYSTEM_SLOT, *defaults})
    template.input_types = {
        **{name: type(value) for name, value in defaults.items() if value is not None},
        **template.input_types,
    }
    template.name = f"prompt:{instruction.id}"
    return template
