"""The instruction library: ``prompt_library/*.jinja`` as prompt cards, rendered messages and
LangChain ``ChatPromptTemplate``s, plus clients' custom templates in a Jinja sandbox.

See ``docs/prompts.md`` for the file format, the slots and the sandbox rules.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from fengchao_chains.prompts.errors import (
    PromptError,
    PromptFileError,
    PromptRenderError,
    PromptTemplateError,
)
from fengchao_chains.prompts.library import (
    DEFAULT_ID,
    Instruction,
    PromptLibrary,
    RenderedPrompt,
    history_messages,
    packaged_prompt_dir,
)
from fengchao_chains.prompts.sandbox import RenderLimits
from fengchao_chains.settings import Settings, get_settings

__all__ = [
    "DEFAULT_ID",
    "Instruction",
    "PromptError",
    "PromptFileError",
    "PromptLibrary",
    "PromptRenderError",
    "PromptTemplateError",
    "RenderLimits",
    "RenderedPrompt",
    "get_prompt_library",
    "history_messages",
    "packaged_prompt_dir",
]


def get_prompt_library(settings: Settings | None = None) -> PromptLibrary:
    """The library for ``settings`` (default: the process settings), loaded once per set of
    directories and limits; call ``.reload()`` on it after editing files."""
    settings = settings or get_settings()
    return _load_cached(
        tuple(settings.prompt_dirs), settings.prompt_max_chars, settings.prompt_render_timeout
    )


@lru_cache(maxsize=8)
def _load_cached(directories: tuple[Path, ...], max_chars: int, timeout: float) -> PromptLibrary:
    limits = RenderLimits(max_chars=max_chars, timeout=timeout)
    return PromptLibrary([packaged_prompt_dir(), *directories], limits)
