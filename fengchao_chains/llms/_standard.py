"""What every chat model of the project shares, remote or in-process: the standard
parameters under LangChain's names and aliases, their mapping to one parameter dict, and
the model's identity for tracing (LangSmith parameters, ``_llm_type``).

Remote models add an endpoint, timeouts and retries on top (:mod:`._base`); the in-process
llama.cpp model adds only what loading a file needs.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.utils.utils import get_pydantic_field_names
from pydantic import ConfigDict, Field, SecretStr, model_validator

from fengchao_chains.llms.errors import AuthenticationError


class StandardChatModel(BaseChatModel):
    """Base of the project's chat models; not used directly."""

    model_config = ConfigDict(populate_by_name=True, arbitrary_types_allowed=True)

    vendor_name: ClassVar[str] = ""
    """The vendor's name in the catalog and in errors."""

    model: str = Field(alias="model_name")
    """The vendor's model name (or endpoint id, or model file)."""
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = Field(default=None, alias="max_completion_tokens")
    stop: list[str] | None = Field(default=None, alias="stop_sequences")
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Vendor parameters sent with every call (the vendor's own names)."""
    streaming: bool = False
    """Accepted for LangChain compatibility; ``invoke`` then streams under the hood."""

    @model_validator(mode="before")
    @classmethod
    def _settings_from_model_kwargs(cls, values: Any) -> Any:
        """Sort the constructor's arguments, as LangChain's partner models do: an unknown
        argument (``seed=7``) is a vendor parameter and moves into ``model_kwargs`` (with a
        warning, in case it is a typo). A catalog card can only carry ``model_kwargs``, so a
        key there that names one of the class's own settings (``bot_api``, ``timeout``,
        ``n_ctx``, ...) sets that setting instead. A setting given directly wins."""
        if not isinstance(values, dict):
            return values
        known = get_pydantic_field_names(cls)
        values = dict(values)
        extra = dict(values.get("model_kwargs") or {})
        for name in [k for k in values if k not in known]:
            warnings.warn(
                f"{name} is not a parameter of {cls.__name__}; it is sent to the vendor as"
                " one of model_kwargs",
                stacklevel=4,
            )
            extra[name] = values.pop(name)
        given = {n for n, f in cls.model_fields.items() if n in values or f.alias in values}
        for name in [k for k in extra if k in cls.model_fields and k != "model_kwargs"]:
            value = extra.pop(name)
            if name not in given:
                values[name] = value
        return {**values, "model_kwargs": extra}

    def _params(self, stop: list[str] | None, **kwargs: Any) -> dict[str, Any]:
        params: dict[str, Any] = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
            "stop": stop if stop is not None else self.stop,
        }
        params = {k: v for k, v in params.items() if v is not None}
        return {**params, **self.model_kwargs, **kwargs}

    @staticmethod
    def _secret(value: SecretStr | None) -> str:
        return value.get_secret_value() if value is not None else ""

    def _require(self, value: SecretStr | None, env: str) -> str:
        """A credential's value, or a clear error naming the variable that supplies it."""
        if value is None or not value.get_secret_value():
            raise AuthenticationError(
                f"no credentials: set {env} or pass them to the model", vendor=self.vendor_name
            )
        return value.get_secret_value()

    @property
    def _llm_type(self) -> str:
        return f"fengchao-{self.vendor_name}"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.model, **self._params(None)}

    def _dict_for_compat(self) -> dict[str, Any]:
        """The model's parameters for each run's ``invocation_params``, without LangChain's
        detour: it reads them through the deprecated ``dict()`` inside
        ``warnings.catch_warnings()``, for subclasses that still override ``dict()`` (none of
        ours does). That block swaps the process's warning filters on every call, which is
        not thread-safe, and cost more than the parameters themselves (0.09 ms of a call's
        ~1 ms at concurrency 1, docs/benchmarks.md)."""
        return self.asdict()

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider=self.vendor_name,
            ls_model_name=str(kwargs.get("model") or self.model),
            ls_model_type="chat",
        )
        temperature = kwargs.get("temperature", self.temperature)
        if temperature is not None:
            params["ls_temperature"] = temperature
        max_tokens = kwargs.get("max_tokens", self.max_tokens)
        if max_tokens is not None:
            params["ls_max_tokens"] = max_tokens
        if stop or self.stop:
            params["ls_stop"] = stop or self.stop
        return params
