"""From a catalog card and the settings to constructor arguments, the same way for every vendor.

Precedence, highest first: the caller's overrides, the card (``base_url``, ``api_key_env``,
``model_kwargs``), the settings (the vendor's standard env vars or the config file), and the
class defaults.
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import SecretStr

from fengchao_chains.catalog.cards import ModelCard


def card_kwargs(
    card: ModelCard,
    *,
    base_url: str | None,
    credentials: dict[str, SecretStr | None],
    overrides: dict[str, Any],
    key_field: str = "api_key",
) -> dict[str, Any]:
    """Constructor arguments for ``card``; ``credentials`` maps field names to the settings'
    secrets, and a card's ``api_key_env`` replaces the one named ``key_field``."""
    kwargs: dict[str, Any] = {
        "model": card.vendor_model,
        "name": card.id,
        "model_kwargs": dict(card.model_kwargs),
    }
    if card.base_url or base_url:
        kwargs["base_url"] = card.base_url or base_url
    if card.timeout is not None:
        kwargs["timeout"] = card.timeout
    if card.max_retries is not None:
        kwargs["max_retries"] = card.max_retries
    kwargs.update({name: value for name, value in credentials.items() if value is not None})
    if card.api_key_env and os.environ.get(card.api_key_env):
        kwargs[key_field] = SecretStr(os.environ[card.api_key_env])
    if "model_kwargs" in overrides:
        kwargs["model_kwargs"].update(overrides.pop("model_kwargs"))
    kwargs.update(overrides)
    return kwargs
