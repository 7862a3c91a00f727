from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.fake_chat_models import FakeListChatModel

from fengchao_chains.catalog import LOCAL, ONLINE, ModelCard, get_chat_model, load_catalog
from fengchao_chains.errors import ConfigurationError, ModelNotAvailableError, UnknownModelError
from fengchao_chains.llms import registry
from fengchao_chains.settings import Settings

# The model table of the original service (seed 000), in its order.
SEED_MODELS = [
    "glm-4", "gpt-3.5-turbo", "gpt-3.5-turbo-1106", "gpt-3.5-turbo-16k",
    "gpt-3.5-turbo-16k-0613", "Qwen1.5-0.5B-Chat", "Qwen1.5-1.8B-Chat", "ERNIE-Bot-4",
    "ERNIE-Bot-8k", "ERNIE-Bot", "ERNIE-Bot-turbo", "BLOOMZ-7B", "Llama-2-7b-chat",
    "Llama-2-13b-chat", "Llama-2-70b-chat", "Mixtral-8x7B-Instruct",
    "Qianfan-Chinese-Llama-2-7B", "Qianfan-Chinese-Llama-2-13B", "claude-3-opus-20240229",
    "claude-3-sonnet-20240229", "skylark-lite-public", "skylark-plus-public",
    "skylark-pro-public", "skylark-chat", "Skylark2-lite-8k", "Skylark2-pro-4k",
    "Skylark2-pro-character-4k", "Skylark2-pro-32k", "Skylark2-pro-turbo-8k",
    "moonshot-v1-8k", "moonshot-v1-32k", "moonshot-v1-128k",
]  # fmt: skip
EMBEDDED_MODEL = "SmolLM2-135M-Instruct"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_packaged_catalog_has_every_seed_model_and_the_embedded_model() -> None:
    catalog = load_catalog()
    assert len(SEED_MODELS) == 32
    assert list(catalog)[:32] == SEED_MODELS
    assert EMBEDDED_MODEL in catalog
    assert catalog[EMBEDDED_MODEL].channel == LOCAL
    for model_id in SEED_MODELS:
        card = catalog[model_id]
        expected_channel = LOCAL if model_id.startswith("Qwen") else ONLINE
        assert card.channel == expected_channel, model_id
        assert card.accepts_files == model_id.startswith("moonshot"), model_id
        assert card.modes == ["invoke", "async", "async_result", "stream"]
        assert card.max_output_token <= card.max_input_token


def test_seed_facts_carry_over() -> None:
    catalog = load_catalog()
    glm = catalog["glm-4"]
    assert (glm.owned_by, glm.in_price, glm.out_price, glm.unit) == ("ChatGLM", 0.1, 0.1, "CNY")
    gpt = catalog["gpt-3.5-turbo"]
    assert (gpt.owned_by, gpt.out_price, gpt.unit) == ("Openai", 0.002, "USD")
    assert catalog["gpt-3.5-turbo-16k"].out_price == 0.004
    qwen = catalog["Qwen1.5-0.5B-Chat"]
    assert (qwen.owned_by, qwen.in_price, qwen.unit, qwen.vendor) == ("Qwen", 0.0, "CNY", "tgi")
    assert catalog["ERNIE-Bot-4"].vendor_model == "completions_pro"
    assert catalog["ERNIE-Bot-turbo"].vendor_model == "eb-instant"


def test_cost_uses_both_prices() -> None:
    card = load_catalog()["claude-3-opus-20240229"]
    assert card.cost(prompt_tokens=2000, completion_tokens=1000) == pytest.approx(0.03 + 0.075)


def test_override_changes_a_price_adds_an_endpoint_and_hides_a_model(tmp_path: Path) -> None:
    override = write(
        tmp_path / "models.toml",
        """
[defaults]
modes = ["invoke", "stream"]

[models."glm-4"]
in_price = 0.05

[models."BLOOMZ-7B"]
enabled = false

[models."my-vllm"]
owned_by = "Us"
vendor = "openai_compatible"
vendor_model = "Qwen/Qwen2.5-7B-Instruct"
base_url = "http://10.0.0.5:8000/v1"
api_key_env = "MY_VLLM_KEY"
channel = "本地模型"
max_input_token = 32768
max_output_token = 4096
in_price = 0
out_price = 0
unit = "CNY"
created = 2026-01-01T00:00:00
""",
    )
    catalog = load_catalog([override])
    assert catalog["glm-4"].in_price == 0.05
    assert catalog["glm-4"].out_price == 0.1  # untouched keys keep their packaged values
    assert catalog["glm-4"].modes == ["invoke", "async", "async_result", "stream"]
    assert "BLOOMZ-7B" not in catalog
    custom = catalog["my-vllm"]
    assert custom.modes == ["invoke", "stream"]  # this file's defaults apply to its new models
    assert custom.base_url == "http://10.0.0.5:8000/v1"
    assert list(catalog)[-1] == "my-vllm"


def test_later_files_win(tmp_path: Path) -> None:
    first = write(tmp_path / "a.toml", '[models."glm-4"]\nin_price = 1.0\n')
    second = write(tmp_path / "b.toml", '[models."glm-4"]\nin_price = 2.0\n')
    assert load_catalog([first, second])["glm-4"].in_price == 2.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[models."glm-4"\n', r"b\.toml is not valid TOML"),
        ('[models."glm-4"]\nin_price = "cheap"\n', r"models\.glm-4: in_price: Input should be"),
        ('[models."glm-4"]\nin_price = -1\n', r"models\.glm-4: in_price: Input should be greater"),
        (
            '[models."glm-4"]\nvendor = "openia"\n',
            r"models\.glm-4\.vendor: unknown vendor 'openia'",
        ),
        ('[models."glm-4"]\nprise = 1\n', r"models\.glm-4: prise: Extra inputs are not permitted"),
        ('[models."glm-4"]\nchannel = "online"\n', r"models\.glm-4: channel: Input should be"),
        ('[models."new"]\nvendor = "openai"\n', r"models\.new: owned_by: Field required"),
        ("[model]\n", r"unknown top-level key 'model'"),
        ('models = ["x"]\n', r"\[defaults\] and \[models\] must be tables"),
    ],
)
def test_malformed_catalog_file_is_one_line_naming_file_model_and_field(
    tmp_path: Path, text: str, expected: str
) -> None:
    bad = write(tmp_path / "b.toml", text)
    with pytest.raises(ConfigurationError, match=expected) as info:
        load_catalog([bad])
    message = str(info.value)
    assert "\n" not in message
    assert str(bad) in message


def test_unreadable_catalog_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"missing\.toml cannot be read"):
        load_catalog([tmp_path / "missing.toml"])


@pytest.mark.parametrize(
    ("asked", "suggested"),
    [
        ("ernie-bot-4", "ERNIE-Bot-4"),
        ("glm4", "glm-4"),
        ("gpt-3.5-turbo-16", "gpt-3.5-turbo-16k"),
        ("claude-3-opus", "claude-3-opus-20240229"),
    ],
)
def test_unknown_model_lists_close_matches(asked: str, suggested: str) -> None:
    catalog = load_catalog()
    with pytest.raises(UnknownModelError) as info:
        catalog[asked]
    assert info.value.close_matches[0] == suggested
    assert repr(suggested) in str(info.value)


def test_unknown_model_without_matches() -> None:
    with pytest.raises(UnknownModelError, match=r"^unknown model 'zzzz' \(") as info:
        load_catalog()["zzzz"]
    assert info.value.close_matches == []


@pytest.fixture
def echo_vendor() -> Iterator[list[dict[str, Any]]]:
    """A vendor registered exactly like a real one; it records what the factory received."""
    calls: list[dict[str, Any]] = []

    def factory(card: ModelCard, settings: Settings, **overrides: Any) -> BaseChatModel:
        calls.append({"card": card, "settings": settings, **overrides})
        return FakeListChatModel(responses=[f"{card.vendor_model}|{overrides.get('tag', '')}"])

    registry.register_vendor("echo", factory)
    registry.BUILTIN_VENDORS.setdefault("echo", None)
    yield calls
    registry.unregister_vendor("echo")
    registry.BUILTIN_VENDORS.pop("echo", None)


def test_get_chat_model_builds_the_vendor_model_from_the_card(
    echo_vendor: list[dict[str, Any]], tmp_path: Path
) -> None:
    override = write(
        tmp_path / "echo.toml",
        '[models."echo-1"]\nowned_by = "Test"\nvendor = "echo"\nvendor_model = "echo-v1"\n'
        'channel = "在线模型"\nmax_input_token = 10\nmax_output_token = 5\nin_price = 0\n'
        'out_price = 0\nunit = "CNY"\nmodes = ["invoke"]\ncreated = 2026-01-01T00:00:00\n',
    )
    settings = Settings(catalog_files=[override])
    model = get_chat_model("echo-1", settings=settings, tag="override-seen")
    assert model.invoke("hi").content == "echo-v1|override-seen"
    assert echo_vendor[0]["card"].id == "echo-1"
    assert echo_vendor[0]["settings"] is settings


def test_vendor_without_implementation_is_not_available() -> None:
    registry.BUILTIN_VENDORS["zhipu"] = None
    registry.unregister_vendor("zhipu")
    try:
        with pytest.raises(ModelNotAvailableError, match=r"'glm-4' is not available.*'zhipu'"):
            get_chat_model("glm-4")
    finally:
        registry.BUILTIN_VENDORS["zhipu"] = "fengchao_chains.llms.zhipu:create"


def test_unknown_id_through_factory() -> None:
    with pytest.raises(UnknownModelError, match="did you mean 'glm-4'"):
        get_chat_model("GLM-4")


def test_registering_a_vendor_twice_is_refused(echo_vendor: list[dict[str, Any]]) -> None:
    with pytest.raises(ValueError, match="already registered"):
        registry.register_vendor(
            "echo", lambda card, settings, **kw: FakeListChatModel(responses=[])
        )
