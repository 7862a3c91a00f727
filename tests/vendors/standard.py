"""langchain-tests' standard suites, run for every vendor class from its test harness.

A vendor's ``test_standard_<vendor>.py`` subclasses the two bases below, naming its
:class:`~tests.vendors.harness.VendorHarness`, the environment ``test_init_from_env`` sets
and the model a per-call ``model=`` switches to; the class, the credentials and the fake
come from the harness, so they are the same ones the contract suite uses.
"""

from __future__ import annotations

import contextlib
from typing import Any, ClassVar

from langchain_core.language_models import BaseChatModel
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from fengchao_chains.testing.fakes._common import FakeVendor
from fengchao_chains.testing.serve import serve_in_thread
from tests.vendors.harness import VendorHarness

_servers: dict[str, tuple[FakeVendor, str]] = {}
_stack = contextlib.ExitStack()

EnvParams = tuple[dict[str, str], dict[str, Any], dict[str, Any]]


def shared_fake(harness: VendorHarness) -> tuple[FakeVendor, str]:
    """The harness's fake, served once per test session (langchain-tests builds the model
    from class properties, so the server cannot be a function-scoped fixture)."""
    if harness.server not in _servers:
        fake = harness.make_fake()
        app: Any = fake.app  # type: ignore[attr-defined]
        url = _stack.enter_context(serve_in_thread(app))
        _servers[harness.server] = (fake, url)
    return _servers[harness.server]


class VendorUnitTests(ChatModelUnitTests):
    """``ChatModelUnitTests`` for ``harness.chat_class``."""

    harness: ClassVar[VendorHarness]
    env: ClassVar[EnvParams]
    """``init_from_env_params``: env vars, constructor arguments, expected attributes."""

    @property
    def chat_model_class(self) -> type[BaseChatModel]:
        return self.harness.chat_class

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return dict(self.harness.credentials)

    @property
    def init_from_env_params(self) -> EnvParams:
        return self.env


class TextOnlyIntegrationTests(ChatModelIntegrationTests):
    """``ChatModelIntegrationTests`` for the project's models, which are text only: no tool
    calling, no structured output."""

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False


class VendorIntegrationTests(TextOnlyIntegrationTests):
    """The text-only integration suite for ``harness.chat_class`` against its fake."""

    harness: ClassVar[VendorHarness]
    override_model: ClassVar[str | None]
    """What ``test_*_with_model_override`` switches to with a per-call ``model=`` (None: the
    server holds one model and answers as it, so there is nothing to switch to)."""

    @property
    def chat_model_class(self) -> type[BaseChatModel]:
        return self.harness.chat_class

    @property
    def chat_model_params(self) -> dict[str, Any]:
        _, url = shared_fake(self.harness)
        return {**self.harness.credentials, "base_url": self.harness.base_url(url)}

    @property
    def model_override_value(self) -> str | None:
        return self.override_model
