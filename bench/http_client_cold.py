"""What one upstream request costs the gateway's HTTP client after an idle gap, against the
least an asyncio client can do.

At concurrency 1 the gateway idles through the upstream's 50 ms before every answer, so both
halves of its request run on a cold core (docs/benchmarks.md, "What is left"). This isolates
the vendor client's share: one process (pinned to CPU 1; the bench's fake OpenAI upstream in a
child process on CPU 0, answering at once) sends the same chat request through

- ``raw``, the anchor: one kept-alive ``asyncio`` stream, the request's bytes written and the
  answer read by its ``Content-Length``, no HTTP library at all;
- ``aiohttp``, the gateway's client, with the session settings ``llms/_http_clients.py`` uses;
- ``aiosonic`` and ``pyreqwest``, if importable (not dependencies: ``pip install`` them to
  compare),

taking turns, with the same idle gap before each request, and prints the median CPU time of
the calling thread (``time.thread_time``: pyreqwest's own threads are not in it) and wall time
per request, and each client's ratio against ``raw``.

    .venv/bin/python bench/http_client_cold.py [--requests 200] [--gap-ms 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._gateway_upstream import API_KEY
from bench.gateway import MODEL, QUESTION, upstream

BODY = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": QUESTION}]}).encode()
HEADERS = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
WARMUP = 20

Send = Callable[[], Awaitable[bytes]]


async def raw_client(url: str, stack: AsyncExitStack) -> Send:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    stack.callback(writer.close)
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Authorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(BODY)}\r\n\r\n"
    )
    request = head.encode() + BODY

    async def send() -> bytes:
        writer.write(request)
        lines = (await reader.readuntil(b"\r\n\r\n")).lower().split(b"\r\n")
        length = next(int(line[15:]) for line in lines if line.startswith(b"content-length:"))
        return await reader.readexactly(length)

    return send


async def aiohttp_client(url: str, stack: AsyncExitStack) -> Send:
    connector = aiohttp.TCPConnector(limit=1000, limit_per_host=0, keepalive_timeout=30)
    session = aiohttp.ClientSession(
        connector=connector, trust_env=False, timeout=aiohttp.ClientTimeout(total=None)
    )
    stack.push_async_callback(session.close)
    timeout = aiohttp.ClientTimeout(total=None, connect=65, sock_connect=5, sock_read=60)

    async def send() -> bytes:
        async with session.request(
            "POST",
            f"{url}/v1/chat/completions",
            data=BODY,
            headers=HEADERS,
            timeout=timeout,
            allow_redirects=False,
        ) as response:
            return await response.read()

    return send


async def aiosonic_client(url: str, stack: AsyncExitStack) -> Send | None:
    try:
        import aiosonic  # type: ignore[import-not-found]
    except ImportError:
        return None
    client = aiosonic.HTTPClient()

    async def send() -> bytes:
        response = await client.post(f"{url}/v1/chat/completions", data=BODY, headers=HEADERS)
        return bytes(await response.content())

    return send


async def pyreqwest_client(url: str, stack: AsyncExitStack) -> Send | None:
    try:
        from pyreqwest.client import ClientBuilder  # type: ignore[import-not-found]
    except ImportError:
        return None
    client = ClientBuilder().build()

    async def send() -> bytes:
        request = client.post(f"{url}/v1/chat/completions").body_bytes(BODY).headers(HEADERS)
        async with request.build_streamed() as response:
            return bytes(await response.bytes())

    return send


async def measure(
    url: str, requests: int, gap: float
) -> dict[str, tuple[list[float], list[float]]]:
    """Per client: CPU ms and wall ms of each request after the idle gap."""
    makers = {
        "raw": raw_client,
        "aiohttp": aiohttp_client,
        "aiosonic": aiosonic_client,
        "pyreqwest": pyreqwest_client,
    }
    async with AsyncExitStack() as stack:
        clients = {name: await make(url, stack) for name, make in makers.items()}
        ready = {name: send for name, send in clients.items() if send is not None}
        figures: dict[str, tuple[list[float], list[float]]] = {n: ([], []) for n in ready}
        for index in range(WARMUP + requests):
            for name, send in ready.items():
                await asyncio.sleep(gap)
                cpu, wall = time.thread_time(), time.perf_counter()
                await send()
                if index >= WARMUP:
                    figures[name][0].append((time.thread_time() - cpu) * 1000)
                    figures[name][1].append((time.perf_counter() - wall) * 1000)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="requests per client")
    parser.add_argument("--gap-ms", type=float, default=50.0, help="idle gap before each")
    opts = parser.parse_args()
    os.sched_setaffinity(0, {0})  # the upstream inherits CPU 0
    with upstream(0.0) as (url, _pid):
        os.sched_setaffinity(0, {1})
        figures = uvloop.run(measure(url, opts.requests, opts.gap_ms / 1000))
    anchor_cpu = statistics.median(figures["raw"][0])
    anchor_wall = statistics.median(figures["raw"][1])
    print(f"one chat request, {opts.requests} per client, {opts.gap_ms:g} ms idle before each")
    print("| client | CPU ms (calling thread), median | ratio vs raw | wall ms, median | ratio |")
    print("|---|---|---|---|---|")
    for name, (cpu, wall) in figures.items():
        median_cpu, median_wall = statistics.median(cpu), statistics.median(wall)
        print(
            f"| {name} | {median_cpu:.3f} | {median_cpu / anchor_cpu:.2f} | "
            f"{median_wall:.3f} | {median_wall / anchor_wall:.2f} |"
        )
    print("(anchor: raw, a kept-alive asyncio stream and no HTTP library)")


if __name__ == "__main__":
    main()
