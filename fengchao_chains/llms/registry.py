"""The vendor registry: vendor name -> a factory that builds a configured ChatModel.

Each vendor module registers itself here (built-ins are imported lazily by name, so a server
that never calls Anthropic never imports its module). Third-party packages can add vendors
through the ``fengchao_chains.vendors`` entry-point group, and tests register fake vendors
exactly the way real ones are registered.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Protocol

from fengchao_chains.errors import ModelNotAvailableError

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

    from fengchao_chains.catalog.cards import ModelCard
    from fengchao_chains.settings import Settings

ENTRY_POINT_GROUP = "fengchao_chains.vendors"


class ChatModelFactory(Protocol):
    def __call__(self, card: ModelCard, settings: Settings, **overrides: Any) -> BaseChatModel: ...


# Every vendor the catalog may name, with the module that implements it once it exists.
# ``None`` marks a vendor whose implementation has not been built yet: its models are listed
# but fail with a clear "not available" error. Vendor issues fill these in.
BUILTIN_VENDORS: dict[str, str | None] = {
    "openai": "fengchao_chains.llms.openai_compatible:create_openai",
    "openai_compatible": "fengchao_chains.llms.openai_compatible:create_compatible",
    "zhipu": "fengchao_chains.llms.zhipu:create",
    "qianfan": "fengchao_chains.llms.qianfan:create",
    "anthropic": "fengchao_chains.llms.anthropic:create",
    "volcengine": "fengchao_chains.llms.volcengine:create",
    "ark": "fengchao_chains.llms.ark:create",
    "ark_bot": "fengchao_chains.llms.ark:create_bot",
    "moonshot": "fengchao_chains.llms.moonshot:create",
    "sensenova": "fengchao_chains.llms.sensenova:create",
    "internlm": "fengchao_chains.llms.internlm:create",
    "tgi": "fengchao_chains.llms.tgi:create",
    "llamacpp": "fengchao_chains.llms.llamacpp:create",
}

_registered: dict[str, ChatModelFactory] = {}


def register_vendor(name: str, factory: ChatModelFactory, *, replace: bool = False) -> None:
    """Make ``factory`` serve every catalog model whose ``vendor`` is ``name``."""
    if name in _registered and not replace:
        raise ValueError(f"vendor {name!r} is already registered")
    _registered[name] = factory


def unregister_vendor(name: str) -> None:
    _registered.pop(name, None)


def vendor_names() -> set[str]:
    """Every vendor name a catalog entry may use."""
    plugin_names = {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return set(BUILTIN_VENDORS) | set(_registered) | plugin_names


def is_available(name: str) -> bool:
    """Whether a chat-model implementation exists for ``name`` (without importing it)."""
    return (
        name in _registered
        or BUILTIN_VENDORS.get(name) is not None
        or any(ep.name == name for ep in entry_points(group=ENTRY_POINT_GROUP))
    )


def get_vendor_factory(name: str, model_id: str) -> ChatModelFactory:
    """The factory for ``name``, importing a built-in or plug-in vendor on first use."""
    if name in _registered:
        return _registered[name]
    target = BUILTIN_VENDORS.get(name)
    if target is None:
        for ep in entry_points(group=ENTRY_POINT_GROUP, name=name):
            target = ep.value
            break
    if target is None:
        raise ModelNotAvailableError(
            f"model {model_id!r} is not available: no chat model for vendor {name!r}"
            " is installed in this version of fengchao-chains"
        )
    factory = _load(target, model_id)
    _registered.setdefault(name, factory)
    return factory


def _load(target: str, model_id: str) -> ChatModelFactory:
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelNotAvailableError(
            f"model {model_id!r} is not available: {exc} (is its optional extra installed?)"
        ) from None
    factory: Callable[..., BaseChatModel] = getattr(module, attr)
    return factory
