"""Client-side overhead per call: our vendor chat models vs each vendor's official SDK.

For each vendor, its fake server runs in a child process on loopback and three clients call
it in turn, the same conversation each time:

- **floor**: a bare ``httpx.Client`` posting the request body and reading the answer (or
  every line of the stream), the least any Python client can do;
- **sdk**: the vendor's official SDK, in its own virtual environment (see tests/vendor_sdks.py);
- **ours**: our ChatModel's ``invoke`` / ``stream`` (every chunk consumed).

Each prints the mean milliseconds per call and the overhead over the floor; the ratio that
the issue targets is ours/sdk (overhead over the floor, and total). Target: <= 1.0.

    .venv/bin/python bench/vendor_overhead.py [--calls 1000] [--vendors openai,anthropic]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from langchain_core.language_models import BaseChatModel  # noqa: E402

from fengchao_chains.testing.serve import serve_in_process  # noqa: E402
from tests.vendor_sdks import sdk_python  # noqa: E402

QUESTION = "Summarise the benefits of connection pooling in one short sentence."

SDK_TIMER = """
import json, time
{setup}
def timed(fn, calls):
    for _ in range(20):
        fn()
    started = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - started) / calls
print(json.dumps({{"invoke": timed(invoke, {calls}), "stream": timed(stream, {calls})}}))
"""


@dataclass
class Case:
    """One vendor: how to serve its fake, build our model, and drive its official SDK."""

    fake: Callable[[], Any]
    ours: Callable[[str], BaseChatModel]
    sdk_group: str
    sdk_setup: str
    """Python run in the SDK venv with ``URL`` defined; must define ``invoke()`` and
    ``stream()``."""
    raw: Callable[[str], tuple[str, dict[str, str], dict[str, Any]]]
    """(url, headers, json body) of the plain HTTP request, for the floor."""


def _openai_fake() -> Any:
    from fengchao_chains.testing.fakes.openai import FakeOpenAI

    return FakeOpenAI().app


def _openai_ours(url: str) -> BaseChatModel:
    from fengchao_chains.llms.openai_compatible import ChatOpenAI

    return ChatOpenAI(model="gpt-3.5-turbo", api_key="sk-test", base_url=f"{url}/v1")


OPENAI_SDK = """
from openai import OpenAI
client = OpenAI(base_url=URL + "/v1", api_key="sk-test", max_retries=2)
MESSAGES = [{"role": "user", "content": QUESTION}]
def invoke():
    return client.chat.completions.create(model="gpt-3.5-turbo", messages=MESSAGES)
def stream():
    for _ in client.chat.completions.create(model="gpt-3.5-turbo", messages=MESSAGES,
                                            stream=True, stream_options={"include_usage": True}):
        pass
"""


def _openai_raw(url: str) -> tuple[str, dict[str, str], dict[str, Any]]:
    body = {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": QUESTION}]}
    return f"{url}/v1/chat/completions", {"Authorization": "Bearer sk-test"}, body


CASES: dict[str, Case] = {
    "openai": Case(_openai_fake, _openai_ours, "openai", OPENAI_SDK, _openai_raw),
}


def _timed(fn: Callable[[], object], calls: int) -> float:
    for _ in range(20):
        fn()
    started = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - started) / calls


def measure_floor(case: Case, url: str, calls: int) -> dict[str, float]:
    target, headers, body = case.raw(url)
    with httpx.Client() as client:

        def invoke() -> None:
            client.post(target, headers=headers, json=body).json()

        def stream() -> None:
            with client.stream("POST", target, headers=headers, json={**body, "stream": True}) as r:
                for _ in r.iter_lines():
                    pass

        return {"invoke": _timed(invoke, calls), "stream": _timed(stream, calls)}


def measure_ours(case: Case, url: str, calls: int) -> dict[str, float]:
    model = case.ours(url)

    def stream() -> None:
        for _ in model.stream(QUESTION):
            pass

    return {
        "invoke": _timed(lambda: model.invoke(QUESTION), calls),
        "stream": _timed(stream, calls),
    }


def measure_sdk(case: Case, url: str, calls: int) -> dict[str, float]:
    setup = f"URL = {url!r}\nQUESTION = {QUESTION!r}\n{case.sdk_setup}"
    program = SDK_TIMER.format(setup=setup, calls=calls)
    completed = subprocess.run(
        [str(sdk_python(case.sdk_group)), "-c", program],
        capture_output=True,
        text=True,
        check=False,
        timeout=1800,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"{case.sdk_group} SDK failed:\n{completed.stderr[-3000:]}")
    figures: dict[str, float] = json.loads(completed.stdout.strip().splitlines()[-1])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--vendors", default=",".join(CASES), help="comma-separated")
    args = parser.parse_args()
    print(f"{args.calls} calls per client and mode; mean ms per call (overhead = minus the floor)")
    print(
        "| vendor | mode | floor | sdk | ours | sdk overhead | our overhead | ours/sdk "
        "(overhead) | ours/sdk (total) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.vendors.split(","):
        case = CASES[name]
        with serve_in_process(case.fake) as url:
            floor = measure_floor(case, url, args.calls)
            sdk = measure_sdk(case, url, args.calls)
            ours = measure_ours(case, url, args.calls)
        for mode in ("invoke", "stream"):
            f, s, o = (floor[mode] * 1000, sdk[mode] * 1000, ours[mode] * 1000)
            s_over, o_over = max(s - f, 1e-6), max(o - f, 0.0)
            print(
                f"| {name} | {mode} | {f:.3f} | {s:.3f} | {o:.3f} | {s - f:.3f} | {o - f:.3f}"
                f" | {o_over / s_over:.2f} | {o / s:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
