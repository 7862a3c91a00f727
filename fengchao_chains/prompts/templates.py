"""Instructions as LangChain prompt templates.

The messages render with the same sandboxed, compiled templates as the ``/aigc`` path (not
LangChain's own ``jinja2`` format, which neither checks templates nor treats undefined
variables as errors), so a chain and the API produce the same text for the same input.
"""

from __future__ import annotations

from typing import Any

from langchain_core.messages import BaseMessage
from langchain_core.prompts import (
    ChatPromptTemplate,
    HumanMessagePromptTemplate,
    MessagesPlaceholder,
    StringPromptTemplate,
    SystemMessagePromptTemplate,
)
from pydantic import ConfigDict, Field

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


class OptionalHistory(MessagesPlaceholder):
    """The optional ``history``, also when given as ``None`` (LangServe sends every field of
    the input schema, an unset optional one as ``null``)."""

    def format_messages(self, **kwargs: Any) -> list[BaseMessage]:
        if kwargs.get(self.variable_name) is None:
            return []
        return super().format_messages(**kwargs)


def chat_prompt_template(instruction: Instruction, limits: RenderLimits) -> ChatPromptTemplate:
    """System message (the prefix around the system text), an optional ``history`` of
    earlier messages, then the user message. ``query`` and required variables are inputs;
    ``system`` and variables with defaults are optional inputs."""
    defaults = {n: v.default for n, v in instruction.variables.items() if not v.required}
    template = ChatPromptTemplate(
        messages=[
            SystemMessagePromptTemplate(
                prompt=SandboxedPromptTemplate.from_compiled(instruction.prefix, limits)
            ),
            OptionalHistory(variable_name=HISTORY, optional=True),
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
