"""Hugging Face chat templates, rendered the way ``transformers`` renders them.

A model's ``tokenizer_config.json`` carries its chat template as a Jinja string; servers
with a chat route (TGI's Messages API, llama.cpp's server) apply it themselves, but TGI's
``/generate`` takes raw text, so a client that falls back to it must apply the template.
Rendering follows ``transformers.PreTrainedTokenizerBase.apply_chat_template``: an immutable
sandbox with ``trim_blocks`` and ``lstrip_blocks``, ``raise_exception`` for the template's own
checks, ``messages`` and ``add_generation_prompt`` (plus the special tokens it may use).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, NoReturn

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from fengchao_chains.errors import ConfigurationError

QWEN_CHATML = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""The chat template of the Qwen1.5 chat models (ChatML, with Qwen's default system prompt
when the conversation has none), as their ``tokenizer_config.json`` ships it."""


class ChatTemplateError(ValueError):
    """A chat template refused a conversation (its own ``raise_exception``) or is broken."""


def _raise_exception(message: str) -> NoReturn:
    raise ChatTemplateError(message)


@lru_cache(maxsize=32)
def _compiled(source: str) -> Any:
    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    environment.globals["raise_exception"] = _raise_exception
    try:
        return environment.from_string(source)
    except TemplateError as exc:
        raise ChatTemplateError(f"the chat template does not compile: {exc}") from None


def render_chat_template(
    source: str,
    messages: list[dict[str, Any]],
    *,
    add_generation_prompt: bool = True,
    **special_tokens: str,
) -> str:
    """The prompt text for ``messages`` (OpenAI-style dicts) under the template ``source``."""
    try:
        text: str = _compiled(source).render(
            messages=messages, add_generation_prompt=add_generation_prompt, **special_tokens
        )
    except ChatTemplateError:
        raise
    except TemplateError as exc:
        raise ChatTemplateError(f"the chat template failed: {exc}") from None
    return text


def load_chat_template(value: str) -> str:
    """A chat template given as Jinja text, a ``.jinja`` file, or a ``tokenizer_config.json``
    (its ``chat_template`` key); a value that is none of these is a configuration error."""
    if "{" in value:
        return value
    path = Path(value).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"chat template {value!r} cannot be read: {exc}") from None
    if path.suffix != ".json":
        return text
    try:
        template = json.loads(text).get("chat_template")
    except (ValueError, AttributeError):
        template = None
    if not isinstance(template, str):
        raise ConfigurationError(f"{path} has no chat_template string")
    return template
