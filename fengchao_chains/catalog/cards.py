"""Model cards: what the gateway knows about one model id."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Channel = Literal["在线模型", "本地模型"]
ONLINE: Channel = "在线模型"
LOCAL: Channel = "本地模型"
Mode = Literal["invoke", "async", "async_result", "stream"]


class ModelCard(BaseModel):
    """One catalog entry. Field names follow the fengchao model list (``/aigc/models/``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=200)
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
    description: str = ""
    created: datetime
    enabled: bool = True

    @field_validator("id")
    @classmethod
    def _no_surrounding_space(cls, value: str) -> str:
        if value != value.strip():
            raise ValueError("must not start or end with whitespace")
        return value

    @property
    def is_local(self) -> bool:
        return self.channel == LOCAL

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """Cost of one call in ``unit``, from the per-1k prices."""
        return (prompt_tokens * self.in_price + completion_tokens * self.out_price) / 1000
