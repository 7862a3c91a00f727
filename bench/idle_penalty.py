"""What the same chat-model call costs after the process has been idle, against back to back.

The gateway bench's c=1 cells (docs/benchmarks.md) cost 3-4x the CPU per request of its
c=100 cells. This isolates the cause: one process calls the bench's fake OpenAI upstream
(a child process on loopback, answering at once) through our ``ChatOpenAICompatible`` with
a usage recorder attached, the gateway's model call, and sleeps a fixed gap before each
call. It prints the call's own CPU time (``time.thread_time`` around the ``ainvoke``: the
LangChain run, our request and parsing, aiohttp's I/O) per gap, and its ratio against the
anchor, the same call with no gap. A gap of 50 ms is the bench's upstream latency: at
concurrency 1 the gateway idles that long before every answer's second half.

    .venv/bin/python bench/idle_penalty.py [--calls 200] [--gaps 0,2,10,50]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from langchain_core.messages import HumanMessage
from langchain_core.runnables import RunnableConfig

from bench._gateway_upstream import API_KEY
from bench.gateway import MODEL, QUESTION, upstream
from fengchao_chains.callbacks import UsageRecorder
from fengchao_chains.catalog import load_catalog
from fengchao_chains.llms.openai_compatible import ChatOpenAICompatible


async def measure(url: str, calls: int, gaps_ms: list[float]) -> dict[float, list[float]]:
    """CPU ms of each call, per gap; the gaps take turns in rounds, so drift hits all."""
    catalog = load_catalog()
    model = ChatOpenAICompatible(model=MODEL, api_key=API_KEY, base_url=f"{url}/v1")
    messages = [HumanMessage(QUESTION)]

    async def call() -> float:
        recorder = UsageRecorder("bench", catalog, front_door="v1")
        config: RunnableConfig = {"callbacks": [recorder], "metadata": {"fengchao_model": MODEL}}
        started = time.thread_time()
        await model.ainvoke(messages, config, max_tokens=256)
        return (time.thread_time() - started) * 1000

    for _ in range(100):  # connections, imports, LangChain's per-object caches
        await call()
    costs: dict[float, list[float]] = {gap: [] for gap in gaps_ms}
    rounds = 5
    for _ in range(rounds):
        for gap in gaps_ms:
            for _ in range(calls // rounds):
                time.sleep(gap / 1000)  # the whole process idles, as the gateway's does
                costs[gap].append(await call())
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200, help="calls per gap")
    parser.add_argument("--gaps", default="0,2,10,50", help="idle gaps before each call, ms")
    opts = parser.parse_args()
    gaps = [float(g) for g in opts.gaps.split(",")]
    with upstream(0.0) as (url, _pid):
        costs = asyncio.run(measure(url, opts.calls, gaps))
    anchor = statistics.median(costs[gaps[0]])
    print(f"one ainvoke through the fake upstream, {opts.calls} calls per gap")
    print("| idle gap before each call (ms) | CPU ms per call, median | p90 | ratio vs anchor |")
    print("|---|---|---|---|")
    for gap, values in costs.items():
        median = statistics.median(values)
        p90 = statistics.quantiles(values, n=10)[-1]
        print(f"| {gap:g} | {median:.3f} | {p90:.3f} | {median / anchor:.2f} |")
    print(f"(anchor: the same call with a {gaps[0]:g} ms gap)")


if __name__ == "__main__":
    main()
