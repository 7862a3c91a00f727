"""Support for running langchain-tests' standard suites against the fake vendors."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from fengchao_chains.testing.fakes._common import FakeVendor
from fengchao_chains.testing.serve import serve_in_thread

_servers: dict[str, tuple[FakeVendor, str]] = {}
_stack = contextlib.ExitStack()


def shared_fake(name: str, factory: Callable[[], FakeVendor]) -> tuple[FakeVendor, str]:
    """A fake served once per test session (langchain-tests builds the model from class
    properties, so the server cannot be a function-scoped fixture)."""
    if name not in _servers:
        fake = factory()
        app: Any = fake.app  # type: ignore[attr-defined]
        url = _stack.enter_context(serve_in_thread(app))
        _servers[name] = (fake, url)
    return _servers[name]


NO_EXTRA_FEATURES: dict[str, bool] = {
    "has_tool_calling": False,
    "has_tool_choice": False,
    "has_structured_output": False,
    "supports_json_mode": False,
    "supports_image_inputs": False,
    "supports_image_urls": False,
    "supports_pdf_inputs": False,
    "supports_audio_inputs": False,
    "supports_video_inputs": False,
    "supports_anthropic_inputs": False,
    "supports_image_tool_message": False,
    "supports_pdf_tool_message": False,
}
