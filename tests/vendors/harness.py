"""What the contract suite (``test_contract.py``) needs to know about each vendor.

A :class:`VendorHarness` says how to serve a vendor's fake, how to build its chat model with
valid (or refused) credentials, how to count the chat requests the fake received, and where
the vendor legitimately differs (its error codes, whether it really streams). Vendors with
several routes (Ark's chat and bots) have one harness per route, sharing one server.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import pytest
from langchain_core.language_models import BaseChatModel

from fengchao_chains.catalog import load_catalog
from fengchao_chains.llms import qianfan, sensenova, zhipu
from fengchao_chains.llms.anthropic import ChatAnthropicMessages
from fengchao_chains.llms.ark import ChatArk, ChatArkBot
from fengchao_chains.llms.errors import (
    AuthenticationError,
    ContentFilteredError,
    ContextTooLongError,
    RateLimitError,
    UpstreamError,
    VendorError,
)
from fengchao_chains.llms.internlm import ChatInternLM
from fengchao_chains.llms.moonshot import ChatMoonshot
from fengchao_chains.llms.openai_compatible import ChatOpenAICompatible
from fengchao_chains.llms.qianfan import ChatQianfan
from fengchao_chains.llms.sensenova import ChatSenseNova
from fengchao_chains.llms.tgi import ChatTGI
from fengchao_chains.llms.volcengine import ChatVolcengineMaas
from fengchao_chains.llms.zhipu import ChatZhipu
from fengchao_chains.testing.fakes._common import FakeVendor, Fault
from fengchao_chains.testing.fakes.anthropic import FakeAnthropic
from fengchao_chains.testing.fakes.ark import FakeArk
from fengchao_chains.testing.fakes.internlm import FakeInternLM
from fengchao_chains.testing.fakes.moonshot import FakeMoonshot
from fengchao_chains.testing.fakes.openai import FakeOpenAI
from fengchao_chains.testing.fakes.qianfan import CHAT_ROUTE, FakeQianfan
from fengchao_chains.testing.fakes.sensenova import (
    TEST_ACCESS_KEY,
    TEST_SECRET_KEY,
    FakeSenseNova,
)
from fengchao_chains.testing.fakes.tgi import FakeTGI
from fengchao_chains.testing.fakes.volcengine import (
    FAKE_ACCESS_KEY,
    FAKE_SECRET_KEY,
    FakeVolcengineMaas,
)
from fengchao_chains.testing.fakes.zhipu import FakeZhipu
from fengchao_chains.testing.serve import serve_in_thread

# Credentials the fakes accept.
ZHIPU_KEY_ID = "zhipu-test-id"
ZHIPU_KEY = f"{ZHIPU_KEY_ID}.zhipu-test-secret"
QIANFAN_AK, QIANFAN_SK = "qf-ak", "qf-sk"
ANTHROPIC_KEY = "sk-ant-test"
ARK_KEY = "ark-test-key"
ARK_ENDPOINT = "ep-20240601123456-abcde"
ARK_BOT = "bot-20240601123456-xyz12"
SENSENOVA_API_KEY = "pk-platform-api-key-0123456789abcdef"
INTERNLM_TOKEN = "puyu-test-token"
TGI_TOKEN = "hf_test_token"  # an inference endpoint in front of TGI checks it

# Catalog entries for Ark: they name the user's own endpoints and bots, so none ship.
ARK_CATALOG = f"""
[models."Skylark2-pro-4k"]
owned_by = "Volcengine"
vendor = "ark"
vendor_model = "{ARK_ENDPOINT}"
channel = "在线模型"
max_input_token = 4096
max_output_token = 1024
in_price = 0.008
out_price = 0.008
unit = "CNY"

[models."doubao-pro-32k"]
owned_by = "Volcengine"
vendor = "ark"
vendor_model = "doubao-pro-32k-240515"
channel = "在线模型"
max_input_token = 32768
max_output_token = 4096
in_price = 0.0008
out_price = 0.002
unit = "CNY"

[models."ark-search-bot"]
owned_by = "Volcengine"
vendor = "ark_bot"
vendor_model = "{ARK_BOT}"
channel = "在线模型"
max_input_token = 32768
max_output_token = 4096
in_price = 0.0008
out_price = 0.002
unit = "CNY"
"""


F = TypeVar("F", bound=FakeVendor)


@dataclass(frozen=True)
class Expected:
    """An error the model must raise: its class, the vendor's code and the HTTP status."""

    error: type[VendorError]
    code: str | int | None
    status: int | None


@dataclass(frozen=True)
class VendorHarness:
    name: str
    vendor: str  # what errors name as their vendor
    server: str  # names the fixture ``<server>_server``; harnesses of one fake share it
    make_fake: Callable[[], FakeVendor]
    path: str  # the served root URL + path = the model's base_url
    chat_class: type[BaseChatModel]
    credentials: Mapping[str, Any]  # constructor arguments with credentials the fake accepts
    bad_credentials: Mapping[str, Any]  # ... and with credentials it refuses
    secrets: tuple[str, ...]  # values in bad_credentials that must never leak
    # catalog id -> the model name the vendor sees and answers with
    catalog: Mapping[str, str]
    env: Callable[[str], dict[str, str]]  # base_url -> the environment get_chat_model reads
    chat_path: str  # where chat requests go ("{model}" stands for the vendor model)
    request_id_prefix: str | None  # errors' request ids start with it ("": any; None: unchecked)
    rate_limited: Expected
    server_error: Expected
    mid_stream: Expected
    bad_key: Expected
    faults: Mapping[Fault, Expected]
    # answers' and mid-stream errors' request ids, where unlike other errors' (None: the same)
    answer_request_id_prefix: str | None = None
    answer_id_is_request_id: bool = False  # the message id is the vendor's request id
    request_ids: bool = True  # False: the vendor gives answers no request id (TGI)
    served_model: str | None = None  # a server holding one model names it in every answer
    finish_reason: str = "stop"  # finish reason of a whole answer
    length_reason: str = "length"  # ... of one cut by max_tokens
    stop_reason: str = "stop"  # ... of one ended by a stop sequence
    context_message: str = ""  # in the error for a prompt over a context window of 20
    stopped_text: str = "Echo: alpha"  # "alpha beta gamma" with stop=["beta"]
    question: str = "hello world"  # what assert_four_modes asks
    usage: dict[str, int] | None = field(
        default_factory=lambda: {"input_tokens": 4, "output_tokens": 6, "total_tokens": 10}
    )  # of "count these words please" (None: the vendor adds its own calls' usage)
    catalog_toml: str = ""  # extra catalog entries the catalog test loads
    factory_overrides: Mapping[str, Any] = field(default_factory=dict)
    sent_model: Callable[[dict[str, Any]], Any] | None = None  # where the body names the model
    auth_header: tuple[str, str] | None = None  # the header a valid key is sent in
    streams: bool = True  # False: the whole answer is read before the first chunk
    never_sent: tuple[str, ...] = ()  # secrets only signatures or tokens are made from
    count_requests: Callable[[FakeVendor], int] = lambda fake: len(fake.requests)
    token_requests: Callable[[FakeVendor], int] | None = None  # for fetched access tokens
    restored: tuple[str, ...] = ()  # settings of the fake tests change, besides context_window
    reset: Callable[[FakeVendor], None] = lambda fake: None  # caches and counters to clear

    @property
    def answer_prefix(self) -> str | None:
        if self.answer_request_id_prefix is None:
            return self.request_id_prefix
        return self.answer_request_id_prefix

    @contextmanager
    def fresh(self, fake: F) -> Iterator[F]:
        """``fake`` for one test: no faults, requests or cached tokens, default settings
        (again afterwards)."""
        defaults = self.make_fake()

        def reset() -> None:
            fake.clear_faults()
            fake.requests.clear()
            for name in ("context_window", *self.restored):
                setattr(fake, name, getattr(defaults, name))
            self.reset(fake)

        reset()
        try:
            yield fake
        finally:
            reset()

    def fixtures(
        self, *, fake: str = "fake", url: str = "url", model: str = "model"
    ) -> tuple[Any, Any, Any]:
        """Fixtures for the vendor's own tests, with the given names: the served fake, fresh
        for the test; the model's base URL; the model pointed at it (valid credentials)."""
        server = f"{self.server}_server"

        @pytest.fixture(name=fake)
        def fresh_fake(request: pytest.FixtureRequest) -> Iterator[FakeVendor]:
            served, _ = request.getfixturevalue(server)
            with self.fresh(served):
                yield served

        @pytest.fixture(name=url)
        def base_url(request: pytest.FixtureRequest) -> str:
            return self.base_url(request.getfixturevalue(server)[1])

        @pytest.fixture(name=model)
        def chat_model(request: pytest.FixtureRequest) -> BaseChatModel:
            request.getfixturevalue(fake)  # so the model always meets a fresh fake
            return self.model(request.getfixturevalue(server)[1])

        return fresh_fake, base_url, chat_model

    def base_url(self, url: str) -> str:
        return f"{url}{self.path}"

    def model(self, url: str, **overrides: Any) -> BaseChatModel:
        """The chat model pointed at the fake served at ``url``: valid credentials, two
        retries, then ``overrides``."""
        arguments = {**self.credentials, "base_url": self.base_url(url), "max_retries": 2}
        return self.chat_class(**(arguments | overrides))

    def __str__(self) -> str:
        return self.name


def body_model(request: dict[str, Any]) -> Any:
    return request["body"]["model"]


def _openai_env(base_url: str) -> dict[str, str]:
    return {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": base_url}


def _zhipu_env(base_url: str) -> dict[str, str]:
    return {"ZHIPUAI_API_KEY": ZHIPU_KEY, "ZHIPUAI_BASE_URL": base_url}


def _qianfan_env(base_url: str) -> dict[str, str]:
    return {"QIANFAN_AK": QIANFAN_AK, "QIANFAN_SK": QIANFAN_SK, "QIANFAN_BASE_URL": base_url}


def _anthropic_env(base_url: str) -> dict[str, str]:
    return {"ANTHROPIC_API_KEY": ANTHROPIC_KEY, "ANTHROPIC_BASE_URL": base_url}


def _volcengine_env(base_url: str) -> dict[str, str]:
    return {
        "VOLC_ACCESSKEY": FAKE_ACCESS_KEY,
        "VOLC_SECRETKEY": FAKE_SECRET_KEY,
        "VOLC_MAAS_BASE_URL": base_url,
    }


def _ark_env(base_url: str) -> dict[str, str]:
    return {"ARK_API_KEY": ARK_KEY, "ARK_BASE_URL": base_url}


def _moonshot_env(base_url: str) -> dict[str, str]:
    return {"MOONSHOT_API_KEY": "sk-test", "MOONSHOT_BASE_URL": base_url}


def _sensenova_env(base_url: str) -> dict[str, str]:
    return {
        "SENSENOVA_ACCESS_KEY_ID": TEST_ACCESS_KEY,
        "SENSENOVA_SECRET_ACCESS_KEY": TEST_SECRET_KEY,
        "SENSENOVA_API_BASE": base_url,
    }


def _internlm_env(base_url: str) -> dict[str, str]:
    return {"INTERNLM_API_KEY": INTERNLM_TOKEN, "INTERNLM_BASE_URL": base_url}


def _tgi_env(base_url: str) -> dict[str, str]:
    return {"TGI_BASE_URL": base_url, "HF_TOKEN": TGI_TOKEN}


def _reset_zhipu(fake: FakeVendor) -> None:
    zhipu.TOKENS.clear()


def _reset_qianfan(fake: FakeVendor) -> None:
    assert isinstance(fake, FakeQianfan)
    fake.token_requests = 0
    qianfan.TOKENS.clear()


def _qianfan_token_requests(fake: FakeVendor) -> int:
    assert isinstance(fake, FakeQianfan)
    return fake.token_requests


def _reset_moonshot(fake: FakeVendor) -> None:
    assert isinstance(fake, FakeMoonshot)
    fake.files.clear()


def _moonshot_chats(fake: FakeVendor) -> int:
    return len([r for r in fake.requests if r["path"].endswith("/chat/completions")])


def _reset_sensenova(fake: FakeVendor) -> None:
    sensenova._tokens.clear()


OPENAI = VendorHarness(
    name="openai_compatible",
    vendor="openai_compatible",
    server="openai",
    make_fake=FakeOpenAI,
    path="/v1",
    chat_class=ChatOpenAICompatible,
    credentials={"model": "gpt-3.5-turbo", "api_key": "sk-test"},
    bad_credentials={"api_key": "sk-this-is-very-secret-123"},
    secrets=("sk-this-is-very-secret-123",),
    catalog={
        m: m
        for m in [
            "gpt-3.5-turbo",
            "gpt-3.5-turbo-1106",
            "gpt-3.5-turbo-16k",
            "gpt-3.5-turbo-16k-0613",
        ]
    },
    env=_openai_env,
    chat_path="/v1/chat/completions",
    request_id_prefix="req_",
    rate_limited=Expected(RateLimitError, "rate_limit_exceeded", 429),
    server_error=Expected(UpstreamError, "server_error", 500),
    mid_stream=Expected(UpstreamError, "server_error", None),
    bad_key=Expected(AuthenticationError, "invalid_api_key", 401),
    faults={
        Fault.UNAUTHORIZED: Expected(AuthenticationError, "invalid_api_key", 401),
        Fault.TOKEN_EXPIRED: Expected(AuthenticationError, "invalid_api_key", 401),
        Fault.CONTEXT_TOO_LONG: Expected(ContextTooLongError, "context_length_exceeded", 400),
        Fault.CONTENT_FILTERED: Expected(ContentFilteredError, "content_filter", 400),
    },
    context_message="maximum context length is 20 tokens",
    sent_model=body_model,
    auth_header=("authorization", "Bearer sk-test"),
)

ZHIPU = VendorHarness(
    name="zhipu",
    vendor="zhipu",
    server="zhipu",
    make_fake=FakeZhipu,
    path="/api/paas/v4",
    chat_class=ChatZhipu,
    credentials={"model": "glm-4", "api_key": ZHIPU_KEY},
    bad_credentials={"api_key": f"{ZHIPU_KEY_ID}.this-is-a-very-wrong-secret"},
    secrets=("this-is-a-very-wrong-secret", f"{ZHIPU_KEY_ID}.this-is-a-very-wrong-secret"),
    catalog={card.id: card.id for card in load_catalog().values() if card.vendor == "zhipu"},
    env=_zhipu_env,
    chat_path="/api/paas/v4/chat/completions",
    request_id_prefix=None,  # only the answers carry one
    rate_limited=Expected(RateLimitError, "1302", 429),
    server_error=Expected(UpstreamError, "500", 500),
    mid_stream=Expected(UpstreamError, "500", None),
    bad_key=Expected(AuthenticationError, "1004", 401),
    faults={
        Fault.UNAUTHORIZED: Expected(AuthenticationError, "1000", 401),
        Fault.CONTEXT_TOO_LONG: Expected(ContextTooLongError, "1261", 400),
        Fault.CONTENT_FILTERED: Expected(ContentFilteredError, "1301", 400),
    },
    answer_request_id_prefix="",
    answer_id_is_request_id=True,
    sent_model=body_model,
    never_sent=("this-is-a-very-wrong-secret", f"{ZHIPU_KEY_ID}.this-is-a-very-wrong-secret"),
    reset=_reset_zhipu,
)

QIANFAN = VendorHarness(
    name="qianfan",
    vendor="qianfan",
    server="qianfan",
    make_fake=FakeQianfan,
    path="",
    chat_class=ChatQianfan,
    credentials={"model": "completions_pro", "api_key": QIANFAN_AK, "secret_key": QIANFAN_SK},
    bad_credentials={"secret_key": "qf-very-secret-sk-123"},
    secrets=("qf-very-secret-sk-123",),
    catalog={
        "ERNIE-Bot-4": "completions_pro",
        "ERNIE-Bot-8k": "ernie_bot_8k",
        "ERNIE-Bot": "completions",
        "ERNIE-Bot-turbo": "eb-instant",
        "BLOOMZ-7B": "bloomz_7b1",
        "Llama-2-7b-chat": "llama_2_7b",
        "Llama-2-13b-chat": "llama_2_13b",
        "Llama-2-70b-chat": "llama_2_70b",
        "Mixtral-8x7B-Instruct": "mixtral_8x7b_instruct",
        "Qianfan-Chinese-Llama-2-7B": "qianfan_chinese_llama_2_7b",
        "Qianfan-Chinese-Llama-2-13B": "qianfan_chinese_llama_2_13b",
    },
    env=_qianfan_env,
    chat_path=CHAT_ROUTE.replace("{endpoint}", "{model}"),
    request_id_prefix="as-",
    rate_limited=Expected(RateLimitError, 18, 200),
    server_error=Expected(UpstreamError, 336000, 200),
    mid_stream=Expected(UpstreamError, 336000, 200),  # Qianfan reports errors in 200 answers
    bad_key=Expected(AuthenticationError, "invalid_client", 401),
    faults={
        Fault.UNAUTHORIZED: Expected(AuthenticationError, 6, 200),
        Fault.CONTEXT_TOO_LONG: Expected(ContextTooLongError, 336103, 200),
        Fault.CONTENT_FILTERED: Expected(ContentFilteredError, "need_clear_history", 200),
    },
    answer_id_is_request_id=True,
    never_sent=("qf-very-secret-sk-123",),
    token_requests=_qianfan_token_requests,
    reset=_reset_qianfan,
)

ANTHROPIC = VendorHarness(
    name="anthropic",
    vendor="anthropic",
    server="anthropic",
    make_fake=FakeAnthropic,
    path="",
    chat_class=ChatAnthropicMessages,
    credentials={"model": "claude-3-opus-20240229", "api_key": ANTHROPIC_KEY},
    bad_credentials={"api_key": "sk-ant-this-is-very-secret-123"},
    secrets=("sk-ant-this-is-very-secret-123",),
    catalog={m: m for m in ["claude-3-opus-20240229", "claude-3-sonnet-20240229"]},
    env=_anthropic_env,
    chat_path="/v1/messages",
    request_id_prefix="req_",
    rate_limited=Expected(RateLimitError, "rate_limit_error", 429),
    server_error=Expected(UpstreamError, "api_error", 500),
    mid_stream=Expected(UpstreamError, "overloaded_error", None),
    bad_key=Expected(AuthenticationError, "authentication_error", 401),
    faults={
        Fault.UNAUTHORIZED: Expected(AuthenticationError, "authentication_error", 401),
        Fault.TOKEN_EXPIRED: Expected(AuthenticationError, "authentication_error", 401),
        Fault.CONTEXT_TOO_LONG: Expected(ContextTooLongError, "invalid_request_error", 400),
        Fault.CONTENT_FILTERED: Expected(ContentFilteredError, "invalid_request_error", 400),
    },
    finish_reason="end_turn",
    length_reason="max_tokens",
    stop_reason="stop_sequence",
    context_message="prompt is too long: 50 tokens > 20 maximum",
    sent_model=body_model,
    auth_header=("x-api-key", ANTHROPIC_KEY),
)

VOLCENGINE = VendorHarness(
    name="volcengine",
    vendor="volcengine",
    server="volcengine",
    make_fake=FakeVolcengineMaas,
    path="",
    chat_class=ChatVolcengineMaas,
    credentials={
        "model": "skylark-lite-public",
        "api_key": FAKE_ACCESS_KEY,
        "secret_key": FAKE_SECRET_KEY,
    },
    bad_credentials={"api_key": "AKLTsecretaccess", "secret_key": "volc-very-secret-key-123"},
    secrets=("AKLTsecretaccess", "volc-very-secret-key-123"),
    catalog={
        m: m
        for m in [
            "skylark-lite-public",
            "skylark-plus-public",
            "skylark-pro-public",
            "skylark-chat",
            "Skylark2-lite-8k",
            "Skylark2-pro-4k",
            "Skylark2-pro-character-4k",
            "Skylark2-pro-32k",
            "Skylark2-pro-turbo-8k",
        ]
    },
    env=_volcengine_env,
    chat_path="/api/v1/chat",
    request_id_prefix="",
    rate_limited=Expected(RateLimitError, "EndpointRateLimitExceeded", 429),
    server_error=Expected(UpstreamError, "InternalServiceError", 500),
    mid_stream=Expected(UpstreamError, "InternalServiceError", None),
    bad_key=Expected(AuthenticationError, "AuthenticationHeaderIsInvalid", 401),
    faults={
        Fault.UNAUTHORIZED: Expected(AuthenticationError, "SignatureDoesNotMatch", 401),
        Fault.TOKEN_EXPIRED: Expected(AuthenticationError, "AuthenticationExpire", 401),
        Fault.CONTEXT_TOO_LONG: Expected(ContextTooLongError, "InvalidParameter", 400),
        Fault.CONTENT_FILTERED: Expected(ContentFilteredError, "ReqTextExistRisk", 400),
    },
    context_message="context length of 20 tokens",
    sent_model=lambda request: request["body"]["model"]["name"],
    never_sent=("volc-very-secret-key-123",),
)

ARK = VendorHarness(
    name="ark",
    vendor="ark",
    server="ark",
    make_fake=lambda: FakeArk(api_keys={ARK_KEY}),
    path="/api/v3",
    chat_class=ChatArk,
    credentials={"model": ARK_ENDPOINT, "api_key": ARK_KEY},
    bad_credentials={"api_key": "ark-this-is-very-secret-123"},
    secrets=("ark-this-is-very-secret-123",),
    catalog={"Skylark2-pro-4k": ARK_ENDPOINT, "doubao-pro-32k": "doubao-pro-32k-240515"},
    env=_ark_env,
    chat_path="/api/v3/chat/completions",
    request_id_prefix="0217",
    rate_limited=Expected(RateLimitError, "RateLimitExceeded.EndpointRPMExceeded", 429),
    server_error=Expected(UpstreamError, "InternalServiceError", 500),
    mid_stream=Expected(UpstreamError, "InternalServiceError", None),
    bad_key=Expected(AuthenticationError, "AuthenticationError", 401),
    faults={
        Fault.UNAUTHORIZED: Expected(AuthenticationError, "AuthenticationError", 401),
        Fault.TOKEN_EXPIRED: Expected(AuthenticationError, "AuthenticationError", 401),
        Fault.CONTEXT_TOO_LONG: Expected(ContextTooLongError, "InvalidParameter", 400),
        Fault.CONTENT_FILTERED: Expected(ContentFilteredError, "SensitiveContentDetected", 400),
    },
    answer_request_id_prefix="req_",  # chat answers carry the gateway's id
    context_message="exceeds the maximum length 20",
    catalog_toml=ARK_CATALOG,
    sent_model=body_model,
    auth_header=("authorization", f"Bearer {ARK_KEY}"),
    restored=("mid_stream_code",),
)

ARK_BOT_V3 = replace(
    ARK,
    name="ark_bot_v3",
    vendor="ark_bot",
    chat_class=ChatArkBot,
    credentials={"model": ARK_BOT, "api_key": ARK_KEY, "bot_api": "v3"},
    catalog={"ark-search-bot": ARK_BOT},
    chat_path="/api/v3/bots/chat/completions",
    answer_request_id_prefix=None,
    answer_id_is_request_id=True,
    usage=None,  # the bot's planner call is billed too
)

ARK_BOT_V2 = replace(
    ARK_BOT_V3,
    name="ark_bot_v2",
    credentials={"model": ARK_BOT, "api_key": ARK_KEY, "bot_api": "v2"},
    factory_overrides={"bot_api": "v2"},
    chat_path="/api/v2/bots/{model}/chat",
    sent_model=None,  # the path names the bot
)

MOONSHOT = VendorHarness(
    name="moonshot",
    vendor="moonshot",
    server="moonshot",
    make_fake=FakeMoonshot,
    path="/v1",
    chat_class=ChatMoonshot,
    credentials={"model": "moonshot-v1-8k", "api_key": "sk-test"},
    bad_credentials={"api_key": "sk-moonshot-very-secret-42"},
    secrets=("sk-moonshot-very-secret-42",),
    catalog={m: m for m in ["moonshot-v1-8k", "moonshot-v1-32k", "moonshot-v1-128k"]},
    env=_moonshot_env,
    chat_path="/v1/chat/completions",
    request_id_prefix="",
    rate_limited=Expected(RateLimitError, "rate_limit_reached_error", 429),
    server_error=Expected(UpstreamError, "server_error", 500),
    mid_stream=Expected(UpstreamError, "server_error", None),
    bad_key=Expected(AuthenticationError, "invalid_authentication_error", 401),
    faults={
        Fault.UNAUTHORIZED: Expected(AuthenticationError, "invalid_authentication_error", 401),
        Fault.TOKEN_EXPIRED: Expected(AuthenticationError, "invalid_authentication_error", 401),
        Fault.CONTEXT_TOO_LONG: Expected(ContextTooLongError, "invalid_request_error", 400),
        Fault.CONTENT_FILTERED: Expected(ContentFilteredError, "content_filter", 400),
    },
    context_message="exceeded model token limit: 20",
    sent_model=body_model,
    auth_header=("authorization", "Bearer sk-test"),
    count_requests=_moonshot_chats,
    restored=("exhausted", "max_file_bytes", "too_large_message"),
    reset=_reset_moonshot,
)

SENSENOVA = VendorHarness(
    name="sensenova",
    vendor="sensenova",
    server="sensenova",
    make_fake=lambda: FakeSenseNova(api_keys={SENSENOVA_API_KEY}),
    path="/v1",
    chat_class=ChatSenseNova,
    credentials={
        "model": "SenseChat-5",
        "api_key": TEST_ACCESS_KEY,
        "secret_key": TEST_SECRET_KEY,
    },
    bad_credentials={"secret_key": "sk-this-is-very-secret-0123456789abcdef"},
    secrets=("sk-this-is-very-secret-0123456789abcdef",),
    catalog={"SenseChat-5": "SenseChat-5"},
    env=_sensenova_env,
    chat_path="/v1/llm/chat-completions",
    request_id_prefix="",
    rate_limited=Expected(RateLimitError, 8, 429),
    server_error=Expected(UpstreamError, 13, 500),
    mid_stream=Expected(UpstreamError, 13, None),
    bad_key=Expected(AuthenticationError, 16, 401),
    faults={
        Fault.UNAUTHORIZED: Expected(AuthenticationError, 16, 401),
        Fault.CONTEXT_TOO_LONG: Expected(ContextTooLongError, 3, 400),
        Fault.CONTENT_FILTERED: Expected(ContentFilteredError, "sensitive", 200),
    },
    answer_id_is_request_id=True,
    stopped_text="Echo: alpha ",  # stop sequences are applied client-side
    context_message="context length (20)",
    sent_model=body_model,
    never_sent=("sk-this-is-very-secret-0123456789abcdef",),
    reset=_reset_sensenova,
)

INTERNLM = VendorHarness(
    name="internlm",
    vendor="internlm",
    server="internlm",
    make_fake=FakeInternLM,
    path="/puyu/api/v1",
    chat_class=ChatInternLM,
    credentials={"api_key": INTERNLM_TOKEN},
    bad_credentials={"api_key": "eyJ0eXBlIjoiSldUIn0.very-secret-token"},
    secrets=("eyJ0eXBlIjoiSldUIn0.very-secret-token",),
    catalog={"ChatPJLM-latest": "ChatPJLM-latest"},
    env=_internlm_env,
    chat_path="/puyu/api/v1/chat/completion",
    request_id_prefix="puyu-req-",
    rate_limited=Expected(RateLimitError, None, 429),
    server_error=Expected(UpstreamError, None, 500),
    mid_stream=Expected(UpstreamError, "-1", 200),  # unused: see streams=False
    bad_key=Expected(AuthenticationError, None, 401),
    faults={
        Fault.UNAUTHORIZED: Expected(AuthenticationError, None, 401),
        Fault.TOKEN_EXPIRED: Expected(AuthenticationError, None, 401),
        Fault.CONTEXT_TOO_LONG: Expected(ContextTooLongError, "-1", 200),
        Fault.CONTENT_FILTERED: Expected(ContentFilteredError, "-1", 200),
    },
    question="你好 puyu",
    sent_model=body_model,
    auth_header=("authorization", INTERNLM_TOKEN),  # raw, no "Bearer"
    streams=False,
    restored=("send_usage",),
)

TGI = VendorHarness(
    name="tgi",
    vendor="tgi",
    server="tgi",
    make_fake=lambda: FakeTGI(api_token=TGI_TOKEN),
    path="",
    chat_class=ChatTGI,
    credentials={"model": "Qwen/Qwen1.5-0.5B-Chat", "api_key": TGI_TOKEN},
    bad_credentials={"api_key": "hf_this_is_a_very_secret_token"},
    secrets=("hf_this_is_a_very_secret_token",),
    catalog={"Qwen1.5-0.5B-Chat": "Qwen/Qwen1.5-0.5B-Chat"},  # a server answers as its model
    env=_tgi_env,
    chat_path="/v1/chat/completions",
    request_id_prefix=None,
    request_ids=False,
    served_model="Qwen/Qwen1.5-0.5B-Chat",
    rate_limited=Expected(RateLimitError, "overloaded", 429),
    server_error=Expected(UpstreamError, "generation", 424),
    mid_stream=Expected(UpstreamError, "generation", 424),
    bad_key=Expected(AuthenticationError, "authentication", 401),
    faults={
        Fault.UNAUTHORIZED: Expected(AuthenticationError, "authentication", 401),
        Fault.TOKEN_EXPIRED: Expected(AuthenticationError, "authentication", 401),
        Fault.CONTEXT_TOO_LONG: Expected(ContextTooLongError, "validation", 422),
    },
    context_message="must be <= 20",
    stopped_text="Echo: alpha ",  # TGI's tokens carry their leading space
    usage=None,  # the Messages API counts the ChatML markers too
    sent_model=body_model,
    auth_header=("authorization", f"Bearer {TGI_TOKEN}"),
)

HARNESSES = [
    OPENAI,
    ZHIPU,
    QIANFAN,
    ANTHROPIC,
    VOLCENGINE,
    ARK,
    ARK_BOT_V3,
    ARK_BOT_V2,
    MOONSHOT,
    SENSENOVA,
    INTERNLM,
    TGI,
]
SERVERS = {h.server: h.make_fake for h in HARNESSES}


def server_fixture(name: str) -> Any:
    """A module-scoped fixture serving the fake ``name`` on loopback: (fake, root URL)."""
    make_fake = SERVERS[name]

    @pytest.fixture(scope="module", name=f"{name}_server")
    def served() -> Iterator[tuple[FakeVendor, str]]:
        fake = make_fake()
        app: Any = fake.app  # type: ignore[attr-defined]
        with serve_in_thread(app) as url:
            yield fake, url

    return served
