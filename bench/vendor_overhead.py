"""Client-side overhead per call: our vendor chat models vs each vendor's official SDK.

For each vendor, its fake server runs in a child process on loopback and three clients call
it in turn, the same conversation each time:

- **floor**: a bare urllib3 connection pool posting the request body and reading the answer
  (or every line of the stream), the least any Python client can do (httpx costs about
  0.2 ms more per call here);
- **sdk**: the vendor's official SDK, in its own virtual environment (see tests/vendor_sdks.py);
- **ours**: our ChatModel's ``invoke`` / ``stream`` (every chunk consumed).

The clients take turns (``--rounds``, default 3, each with ``calls / rounds`` calls), and
each prints its milliseconds per call (the median round; within a round, the median of five
blocks' means) and its overhead over the floor; the ratio that the issue targets is
ours/sdk (overhead over the floor, and total). Target: <= 1.0.
The last column takes LangChain's own per-call cost (measured without I/O in the same run)
out of ours, to show what the HTTP side of our models costs against the SDK's.

    .venv/bin/python bench/vendor_overhead.py [--calls 1000] [--rounds 3] [--vendors openai,...]
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import itertools
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import urllib3

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from langchain_core.messages import BaseMessage, HumanMessage  # noqa: E402

from fengchao_chains.llms._base import VendorChatModel  # noqa: E402
from fengchao_chains.llms._http import encoded_url  # noqa: E402
from fengchao_chains.testing.fakes.sensenova import TEST_ACCESS_KEY, TEST_SECRET_KEY  # noqa: E402
from fengchao_chains.testing.fakes.volcengine import FAKE_ACCESS_KEY, FAKE_SECRET_KEY  # noqa: E402
from fengchao_chains.testing.serve import serve_in_process  # noqa: E402
from tests.vendor_sdks import sdk_python  # noqa: E402

QUESTION = "Summarise the benefits of connection pooling in one short sentence."

SDK_TIMER = """
from __future__ import annotations
import json, time
{setup}
{timed}
print(json.dumps({{"invoke": _timed(invoke, {calls}), "stream": _timed(stream, {calls})}}))
"""
"""The SDK's run: its setup, then the same ``_timed`` loop as ours (its source is sent)."""


def _openai_style_sdk(client: str, model: str, *, include_usage: bool) -> str:
    """The setup for an SDK with OpenAI's client shape (openai itself for OpenAI and
    Moonshot, and Ark's runtime); ``client`` constructs it."""
    options = ', stream_options={"include_usage": True}' if include_usage else ""
    return f"""
{client}
MESSAGES = [{{"role": "user", "content": QUESTION}}]
def invoke():
    client.chat.completions.create(model={model!r}, messages=MESSAGES)
def stream():
    for _ in client.chat.completions.create(model={model!r}, messages=MESSAGES,
                                            stream=True{options}):
        pass
"""


@dataclass
class Case:
    """One vendor: how to serve its fake, build our model, and drive its official SDK."""

    fake: Callable[[], Any]
    """Builds the fake's ASGI app (called in the server's child process)."""
    ours: Callable[[str], VendorChatModel]
    sdk_group: str
    sdk_setup: str
    """Python run in the SDK venv with ``URL`` and ``QUESTION`` defined; it must define
    ``invoke()`` and ``stream()``."""
    langchain_class: tuple[str, str] | None = None
    """Where LangChain has its own class for the vendor: its venv group and setup (same
    contract as ``sdk_setup``), a second anchor that pays LangChain's costs as ours does."""


def _app(module: str, cls: str, **kwargs: Any) -> Callable[[], Any]:
    def build() -> Any:
        fake_class = getattr(importlib.import_module(module), cls)
        return fake_class(**kwargs).app

    return build


def _model(
    module: str, cls: str, base_suffix: str = "", **kwargs: Any
) -> Callable[[str], VendorChatModel]:
    def build(url: str) -> VendorChatModel:
        model_class = getattr(importlib.import_module(module), cls)
        return cast(VendorChatModel, model_class(base_url=url + base_suffix, **kwargs))

    return build


FAKES = "fengchao_chains.testing.fakes"
LLMS = "fengchao_chains.llms"

CASES: dict[str, Case] = {
    "openai": Case(
        _app(f"{FAKES}.openai", "FakeOpenAI"),
        _model(
            f"{LLMS}.openai_compatible",
            "ChatOpenAI",
            model="gpt-3.5-turbo",
            api_key="sk-test",
            base_suffix="/v1",
        ),
        "openai",
        _openai_style_sdk(
            'from openai import OpenAI\nclient = OpenAI(base_url=URL + "/v1", api_key="sk-test")',
            "gpt-3.5-turbo",
            include_usage=True,
        ),
    ),
    "qianfan": Case(
        _app(f"{FAKES}.qianfan", "FakeQianfan"),
        _model(
            f"{LLMS}.qianfan",
            "ChatQianfan",
            model="completions_pro",
            api_key="qf-ak",
            secret_key="qf-sk",
        ),
        "qianfan",
        """
import os, tempfile
os.environ.update({"QIANFAN_BASE_URL": URL, "QIANFAN_CONSOLE_API_BASE_URL": URL,
                   "QIANFAN_IAM_BASE_URL": URL, "QIANFAN_AK": "qf-ak", "QIANFAN_SK": "qf-sk",
                   "QIANFAN_DISABLE_CACHE": "true", "HOME": tempfile.mkdtemp()})
import qianfan
chat = qianfan.ChatCompletion()
MESSAGES = [{"role": "user", "content": QUESTION}]
def invoke():
    chat.do(endpoint="completions_pro", messages=MESSAGES)
def stream():
    for _ in chat.do(endpoint="completions_pro", messages=MESSAGES, stream=True):
        pass
""",
    ),
    "moonshot": Case(
        _app(f"{FAKES}.moonshot", "FakeMoonshot"),
        _model(
            f"{LLMS}.moonshot",
            "ChatMoonshot",
            model="moonshot-v1-8k",
            api_key="sk-test",
            base_suffix="/v1",
        ),
        "openai",
        _openai_style_sdk(
            'from openai import OpenAI\nclient = OpenAI(base_url=URL + "/v1", api_key="sk-test")',
            "moonshot-v1-8k",
            include_usage=False,  # Moonshot puts usage in the last choice unasked
        ),
    ),
    "anthropic": Case(
        _app(f"{FAKES}.anthropic", "FakeAnthropic"),
        _model(
            f"{LLMS}.anthropic",
            "ChatAnthropicMessages",
            model="claude-3-sonnet-20240229",
            api_key="sk-ant-test",
        ),
        "anthropic",
        """
from anthropic import Anthropic
client = Anthropic(base_url=URL, api_key="sk-ant-test")
MESSAGES = [{"role": "user", "content": QUESTION}]
def invoke():
    client.messages.create(model="claude-3-sonnet-20240229", max_tokens=1024, messages=MESSAGES)
def stream():
    for _ in client.messages.create(model="claude-3-sonnet-20240229", max_tokens=1024,
                                    messages=MESSAGES, stream=True):
        pass
""",
        (
            "langchain-anthropic",
            """
from langchain_anthropic import ChatAnthropic
chat = ChatAnthropic(model="claude-3-sonnet-20240229", base_url=URL, api_key="sk-ant-test",
                     max_tokens=1024)
def invoke():
    chat.invoke(QUESTION)
def stream():
    for _ in chat.stream(QUESTION):
        pass
""",
        ),
    ),
    "zhipu": Case(
        _app(f"{FAKES}.zhipu", "FakeZhipu"),
        _model(
            f"{LLMS}.zhipu",
            "ChatZhipu",
            model="glm-4",
            api_key="zhipu-test-id.zhipu-test-secret",
            base_suffix="/api/paas/v4",
        ),
        "zhipuai",
        """
from zhipuai import ZhipuAI
client = ZhipuAI(api_key="zhipu-test-id.zhipu-test-secret", base_url=URL + "/api/paas/v4")
MESSAGES = [{"role": "user", "content": QUESTION}]
def invoke():
    client.chat.completions.create(model="glm-4", messages=MESSAGES)
def stream():
    for _ in client.chat.completions.create(model="glm-4", messages=MESSAGES, stream=True):
        pass
""",
    ),
    "volcengine": Case(
        _app(f"{FAKES}.volcengine", "FakeVolcengineMaas"),
        _model(
            f"{LLMS}.volcengine",
            "ChatVolcengineMaas",
            model="skylark-pro-public",
            api_key=FAKE_ACCESS_KEY,
            secret_key=FAKE_SECRET_KEY,
        ),
        "volcengine",
        f"""
from volcengine.maas import MaasService
maas = MaasService(URL.removeprefix("http://"), "cn-beijing")
maas.service_info.scheme = "http"
maas.set_ak("{FAKE_ACCESS_KEY}")
maas.set_sk("{FAKE_SECRET_KEY}")
REQUEST = {{"model": {{"name": "skylark-pro-public"}},
           "messages": [{{"role": "user", "content": QUESTION}}]}}
def invoke():
    maas.chat(REQUEST)
def stream():
    for _ in maas.stream_chat(REQUEST):
        pass
""",
        (
            "langchain-community",
            f"""
import warnings
warnings.simplefilter("ignore")
from langchain_community.chat_models import VolcEngineMaasChat
chat = VolcEngineMaasChat(model="skylark-pro-public", endpoint=URL.removeprefix("http://"),
                          region="cn-beijing", volc_engine_maas_ak="{FAKE_ACCESS_KEY}",
                          volc_engine_maas_sk="{FAKE_SECRET_KEY}")
chat.client.service_info.scheme = "http"
def invoke():
    chat.invoke(QUESTION)
def stream():
    for _ in chat.stream(QUESTION):
        pass
""",
        ),
    ),
    "ark": Case(
        _app(f"{FAKES}.ark", "FakeArk", api_keys={"ark-test-key"}),
        _model(
            f"{LLMS}.ark",
            "ChatArk",
            model="ep-20240101-bench",
            api_key="ark-test-key",
            base_suffix="/api/v3",
        ),
        "volcengine",
        _openai_style_sdk(
            "from volcenginesdkarkruntime import Ark\n"
            'client = Ark(base_url=URL + "/api/v3", api_key="ark-test-key")',
            "ep-20240101-bench",
            include_usage=True,
        ),
    ),
    "sensenova": Case(
        _app(f"{FAKES}.sensenova", "FakeSenseNova"),
        _model(
            f"{LLMS}.sensenova",
            "ChatSenseNova",
            model="SenseChat-5",
            api_key=TEST_ACCESS_KEY,
            secret_key=TEST_SECRET_KEY,
            base_suffix="/v1",
        ),
        "sensenova",
        f"""
import sensenova
sensenova.access_key_id = "{TEST_ACCESS_KEY}"
sensenova.secret_access_key = "{TEST_SECRET_KEY}"
sensenova.api_base = URL + "/v1"
MESSAGES = [{{"role": "user", "content": QUESTION}}]
def invoke():
    sensenova.ChatCompletion.create(model="SenseChat-5", messages=MESSAGES)
def stream():
    for _ in sensenova.ChatCompletion.create(model="SenseChat-5", messages=MESSAGES,
                                             stream=True):
        pass
""",
    ),
}


def _timed(fn: Callable[[], object], calls: int) -> float:
    """Seconds per call: the median over five blocks of ``calls / 5`` calls each (after 20
    warm-up calls), so a burst of other work on the machine moves one block, not the
    figure."""
    for _ in range(20):
        fn()
    block = max(1, calls // 5)
    means = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(block):
            fn()
        means.append((time.perf_counter() - started) / block)
    return sorted(means)[2]


def measure_floor(case: Case, url: str, calls: int) -> dict[str, float]:
    """A bare urllib3 connection pool (the cheapest Python client measured here) sending
    exactly what our model sends (signed once: the fakes accept a signature or token again
    within its validity)."""
    model = case.ours(url)
    question: list[BaseMessage] = [HumanMessage(QUESTION)]
    sent: dict[bool, tuple[str, dict[str, str], bytes]] = {}
    for streaming in (False, True):
        request = model._chat_request(question, model._params(None), stream=streaming)
        headers = {**request.headers, **model._sign(request)}
        sent[streaming] = (encoded_url(request), headers, request.body)
    with urllib3.connection_from_url(url, maxsize=4) as pool:

        def invoke() -> None:
            target, headers, body = sent[False]
            json.loads(pool.urlopen("POST", target, body=body, headers=headers).data)

        def stream() -> None:
            target, headers, body = sent[True]
            response = pool.urlopen(
                "POST", target, body=body, headers=headers, preload_content=False
            )
            for _ in response:  # line by line
                pass
            response.release_conn()

        return {"invoke": _timed(invoke, calls), "stream": _timed(stream, calls)}


def _time_model(model: Any, calls: int) -> dict[str, float]:
    """Seconds per ``invoke`` and per fully read ``stream`` of QUESTION."""

    def stream() -> None:
        for _ in model.stream(QUESTION):
            pass

    return {
        "invoke": _timed(lambda: model.invoke(QUESTION), calls),
        "stream": _timed(stream, calls),
    }


def measure_ours(case: Case, url: str, calls: int) -> dict[str, float]:
    return _time_model(case.ours(url), calls)


def measure_in_venv(group: str, setup: str, url: str, calls: int) -> dict[str, float]:
    """Time ``setup``'s ``invoke`` and ``stream`` in ``group``'s venv (tests/vendor_sdks.py)."""
    setup = f"URL = {url!r}\nQUESTION = {QUESTION!r}\n{setup}"
    program = SDK_TIMER.format(setup=setup, timed=inspect.getsource(_timed), calls=calls)
    completed = subprocess.run(
        [str(sdk_python(group)), "-c", program],
        capture_output=True,
        text=True,
        check=False,
        timeout=1800,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"{group} client failed:\n{completed.stderr[-3000:]}")
    figures: dict[str, float] = json.loads(completed.stdout.strip().splitlines()[-1])
    return figures


def measure_langchain(calls: int) -> dict[str, float]:
    """LangChain's own per-call cost (callbacks, message objects, chunk merging) with no I/O:
    ``GenericFakeChatModel`` answering the fakes' reply, streamed word by word. Every
    LangChain ChatModel pays it; the SDKs do not."""
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage

    reply = AIMessage(f"Echo: {QUESTION}")
    return _time_model(GenericFakeChatModel(messages=itertools.repeat(reply)), calls)


Timings = dict[str, float]


def measure_in_rounds(
    case: Case, url: str, calls: int, rounds: int
) -> tuple[Timings, Timings, Timings, Timings | None]:
    """The clients take turns ``rounds`` times with ``calls / rounds`` calls each, and each
    keeps its median round: a slow spell of the machine then hits every client alike
    instead of whichever ran during it."""
    per_round = max(5, calls // rounds)
    runs: dict[str, list[Timings]] = {"floor": [], "sdk": [], "ours": [], "partner": []}
    for _ in range(rounds):
        runs["floor"].append(measure_floor(case, url, per_round))
        runs["sdk"].append(measure_in_venv(case.sdk_group, case.sdk_setup, url, per_round))
        runs["ours"].append(measure_ours(case, url, per_round))
        if case.langchain_class:
            runs["partner"].append(measure_in_venv(*case.langchain_class, url, per_round))

    def median(timings: list[Timings]) -> Timings:
        return {mode: sorted(t[mode] for t in timings)[len(timings) // 2] for mode in timings[0]}

    partner = median(runs["partner"]) if runs["partner"] else None
    return median(runs["floor"]), median(runs["sdk"]), median(runs["ours"]), partner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--vendors", default=",".join(CASES), help="comma-separated")
    parser.add_argument(
        "--rounds", type=int, default=3, help="clients take turns this many times (median)"
    )
    args = parser.parse_args()
    langchain = measure_langchain(args.calls)
    print(
        f"{args.calls} calls per client and mode in {args.rounds} rounds of turns; ms per call"
        " (the median over the rounds of the median of 5 blocks' means)."
        " overhead = minus the floor;"
        " lc = LangChain's own per-call cost without I/O (invoke "
        f"{langchain['invoke'] * 1000:.3f}, stream {langchain['stream'] * 1000:.3f});"
        " lc class = LangChain's own class for the vendor, where there is one"
    )
    print(
        "| vendor | mode | floor | sdk | ours | sdk overhead | our overhead | ours/sdk "
        "(overhead) | ours/sdk (total) | ours minus lc / sdk (overhead) | lc class "
        "| ours/lc class (overhead) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.vendors.split(","):
        case = CASES[name]
        with serve_in_process(case.fake) as url:
            floor, sdk, ours, partner = measure_in_rounds(case, url, args.calls, args.rounds)
        for mode in ("invoke", "stream"):
            f, s, o = (floor[mode] * 1000, sdk[mode] * 1000, ours[mode] * 1000)
            lc = langchain[mode] * 1000
            s_over, o_over = max(s - f, 1e-6), max(o - f, 0.0)
            if partner is None:
                p_cells = "- | -"
            else:
                p = partner[mode] * 1000
                p_cells = f"{p:.3f} | {o_over / max(p - f, 1e-6):.2f}"
            print(
                f"| {name} | {mode} | {f:.3f} | {s:.3f} | {o:.3f} | {s - f:.3f} | {o - f:.3f}"
                f" | {o_over / s_over:.2f} | {o / s:.2f} | {max(o_over - lc, 0) / s_over:.2f}"
                f" | {p_cells} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
