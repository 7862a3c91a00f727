"""Volcengine Ark (v3 chat and bots) against the fake Ark server: what only Ark does (what
every vendor shares is in ``test_contract.py``, run for the chat and both bot routes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from langchain_core.messages import HumanMessage, SystemMessage

from fengchao_chains import get_chat_model
from fengchao_chains.catalog import Catalog, load_catalog
from fengchao_chains.llms.ark import ChatArk, ChatArkBot
from fengchao_chains.llms.errors import (
    AuthenticationError,
    ContentFilteredError,
    RateLimitError,
    VendorError,
)
from fengchao_chains.settings import Settings, load_settings
from fengchao_chains.testing.fakes._common import Fault
from fengchao_chains.testing.fakes.ark import FakeArk
from tests.vendors.checks import summed, tuned
from tests.vendors.harness import ARK, ARK_CATALOG
from tests.vendors.harness import ARK_BOT as BOT
from tests.vendors.harness import ARK_ENDPOINT as ENDPOINT

fake, base, chat = ARK.fixtures(url="base", model="chat")


@pytest.fixture(params=["v3", "v2"])
def bot(request: pytest.FixtureRequest, base: str, fake: FakeArk) -> ChatArkBot:
    return ChatArkBot(model=BOT, api_key="ark-test-key", base_url=base, bot_api=request.param)


@pytest.fixture(params=["chat", "bot-v3", "bot-v2"])
def any_model(request: pytest.FixtureRequest, base: str, fake: FakeArk) -> ChatArk:
    """Every route, for the behaviour they share."""
    if request.param == "chat":
        return ChatArk(model=ENDPOINT, api_key="ark-test-key", base_url=base)
    api = request.param.removeprefix("bot-")
    return ChatArkBot(model=BOT, api_key="ark-test-key", base_url=base, bot_api=api)


@pytest.fixture
def catalog(tmp_path: Path, base: str, monkeypatch: pytest.MonkeyPatch) -> tuple[Catalog, Settings]:
    extra = tmp_path / "ark.toml"
    extra.write_text(ARK_CATALOG, encoding="utf-8")
    monkeypatch.setenv("ARK_API_KEY", "ark-test-key")
    monkeypatch.setenv("ARK_BASE_URL", base)
    settings = load_settings()
    return load_catalog([*settings.catalog_files, extra]), settings


# ---------------------------------------------------------------------------- configuration


def test_catalog_overrides_win(catalog: tuple[Catalog, Settings], fake: FakeArk) -> None:
    cards, settings = catalog
    model = get_chat_model("Skylark2-pro-4k", catalog=cards, settings=settings, temperature=0.2)
    model.invoke("hi")
    assert fake.last_request["body"]["temperature"] == 0.2
    with pytest.raises(AuthenticationError):
        get_chat_model("Skylark2-pro-4k", catalog=cards, settings=settings, api_key="nope").invoke(
            "hi"
        )


def test_a_card_sets_class_settings_through_model_kwargs(
    tmp_path: Path, base: str, fake: FakeArk, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A catalog card only has ``model_kwargs``: a key there naming a setting of the class
    (``bot_api``) sets it instead of travelling to the vendor."""
    extra = tmp_path / "bot.toml"
    extra.write_text(
        f'[models."v2-bot"]\nowned_by = "Volcengine"\nvendor = "ark_bot"\n'
        f'vendor_model = "{BOT}"\nchannel = "在线模型"\nmax_input_token = 4096\n'
        'max_output_token = 1024\nin_price = 0\nout_price = 0\nunit = "CNY"\n'
        'model_kwargs = { bot_api = "v2", top_k = 3 }\n',
        encoding="utf-8",
    )
    monkeypatch.setenv("ARK_API_KEY", "ark-test-key")
    monkeypatch.setenv("ARK_BASE_URL", base)
    settings = load_settings()
    cards = load_catalog([*settings.catalog_files, extra])
    model = get_chat_model("v2-bot", catalog=cards, settings=settings)
    assert model.invoke("hi").content == "Echo: hi"
    assert fake.last_request["path"] == f"/api/v2/bots/{BOT}/chat"
    assert "bot_api" not in json.dumps(fake.last_request["body"])


def test_env_vars_configure_the_classes(
    base: str, fake: FakeArk, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ARK_API_KEY", "ark-test-key")
    monkeypatch.setenv("ARK_BASE_URL", base)
    assert ChatArk(model=ENDPOINT).invoke("hi").content == "Echo: hi"
    assert ChatArkBot(model=BOT).invoke("hi").content == "Echo: hi"
    assert ChatArk(model=ENDPOINT).default_base_url == "https://ark.cn-beijing.volces.com/api/v3"


def test_missing_key_fails_before_calling(base: str, fake: FakeArk) -> None:
    with pytest.raises(AuthenticationError, match="ARK_API_KEY"):
        ChatArk(model=ENDPOINT, base_url=base).invoke("hi")
    assert fake.requests == []


# ---------------------------------------------------------------------------- the wire


def test_chat_payload_maps_standard_parameters(chat: ChatArk, fake: FakeArk) -> None:
    tuned_model = tuned(chat, model_kwargs={"repetition_penalty": 1.05})
    tuned_model.invoke([SystemMessage("be brief"), HumanMessage("hi")], stop=["\n\n"], user="u1")
    body = fake.last_request["body"]
    assert body == {
        "model": ENDPOINT,
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"},
        ],
        "temperature": 0.3,
        "top_p": 0.9,
        "max_tokens": 50,
        "stop": ["\n\n"],
        "repetition_penalty": 1.05,
        "user": "u1",
        "stream": False,
    }
    list(tuned_model.stream("hi"))
    assert fake.last_request["body"]["stream_options"] == {"include_usage": True}


def test_bot_v2_nests_parameters_and_names_the_bot_in_the_path(base: str, fake: FakeArk) -> None:
    bot = ChatArkBot(
        model=BOT,
        api_key="ark-test-key",
        base_url=base,
        bot_api="v2",
        temperature=0.5,
        model_kwargs={"top_k": 5},
    )
    bot.invoke("hi", max_tokens=20)
    request = fake.last_request
    assert request["path"] == f"/api/v2/bots/{BOT}/chat"
    assert request["body"] == {
        "messages": [{"role": "user", "content": "hi"}],
        "stream": False,
        "parameters": {"temperature": 0.5, "max_tokens": 20, "top_k": 5},
    }
    bot.invoke("hi", model="bot-other")
    assert fake.last_request["path"] == "/api/v2/bots/bot-other/chat"


def test_per_call_model_overrides(chat: ChatArk, base: str, fake: FakeArk) -> None:
    answer = chat.invoke("hi", model="ep-20240601123456-other")
    assert fake.last_request["body"]["model"] == "ep-20240601123456-other"
    assert answer.response_metadata["model_name"] == "ep-20240601123456-other"
    bot = ChatArkBot(model=BOT, api_key="ark-test-key", base_url=base)
    bot.invoke("hi", model="bot-other")
    assert fake.last_request["body"]["model"] == "bot-other"
    assert fake.last_request["path"] == "/api/v3/bots/chat/completions"


# ---------------------------------------------------------------------------- bots


def test_bot_answer_carries_references_and_usage(bot: ChatArkBot, fake: FakeArk) -> None:
    answer = bot.invoke("北京天气")
    metadata = answer.response_metadata
    assert metadata["references"] == fake.bot_references("北京天气")
    assert metadata["references"][0]["url"].startswith("https://search.example.com/")
    assert [m["name"] for m in metadata["model_usage"]] == [f"ep-{BOT}-answer", f"ep-{BOT}-planner"]
    assert metadata["action_usage"] == [{"name": "web_search", "search_count": 1}]
    assert metadata["request_id"].startswith("0217")
    # usage is the sum over the bot's model calls: the answer and the planner
    answer_call, planner = metadata["model_usage"]
    assert answer_call["completion_tokens"] == 6  # Echo, :, 北, 京, 天, 气
    assert answer.usage_metadata == {
        "input_tokens": answer_call["prompt_tokens"] + planner["prompt_tokens"],
        "output_tokens": 6 + planner["completion_tokens"],
        "total_tokens": answer_call["total_tokens"] + planner["total_tokens"],
    }


async def test_bot_stream_puts_references_and_usage_on_the_last_chunk(
    bot: ChatArkBot,
) -> None:
    chunks = [c async for c in bot.astream("北京天气")]
    assert all("references" not in c.response_metadata for c in chunks[:-1])
    assert [bool(c.usage_metadata) for c in chunks].count(True) == 1
    last = chunks[-1]
    assert last.usage_metadata is not None
    assert last.response_metadata["references"][0]["title"] == "About 北京天气"
    assert len(last.response_metadata["model_usage"]) == 2
    assert last.response_metadata["action_usage"][0]["search_count"] == 1
    whole = await bot.ainvoke("北京天气")
    total = summed(chunks)
    assert total.content == whole.content
    assert total.usage_metadata == whole.usage_metadata
    assert total.response_metadata["references"] == whole.response_metadata["references"]


def test_bot_without_references_reports_an_empty_list(
    bot: ChatArkBot, fake: FakeArk, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fake, "bot_references", lambda query: [])
    assert bot.invoke("hi").response_metadata["references"] == []
    assert summed(list(bot.stream("hi"))).response_metadata["references"] == []


# ---------------------------------------------------------------------------- streams


@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("OutputTextSensitiveContentDetected", ContentFilteredError),
        ("RateLimitExceeded.EndpointTPMExceeded", RateLimitError),
    ],
)
async def test_error_chunk_is_mapped_by_its_code(
    any_model: ChatArk, fake: FakeArk, code: str, error: type[VendorError]
) -> None:
    fake.mid_stream_code = code
    fake.inject(Fault.MID_STREAM_ERROR)
    with pytest.raises(error) as caught:
        async for _ in any_model.astream("one two three four"):
            pass
    assert caught.value.code == code
    assert len(fake.requests) == 1  # a stream that has begun is never replayed
