"""Time from ``fengchao serve`` to the first successful ``GET /aigc/models/``.

Cold: a new data directory (initdb, first migrations). Warm: the same directory again.
Anchor: a bare FastAPI app under uvicorn answering its first request, measured in the same
run, so the ratio shows what the gateway's own start-up (imports, embedded PostgreSQL,
migrations, catalog) costs over the floor of any Python web app.

    .venv/bin/python bench/startup.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent
LISTEN = re.compile(r"http://127\.0\.0\.1:(\d+)")
HELLO_APP = """
from fastapi import FastAPI
app = FastAPI()
@app.get("/aigc/models/")
def models():
    return {"data": []}
"""


def time_to_first_request(command: list[str], env: dict[str, str], cwd: str) -> float:
    """Seconds from process start to the first 200 from /aigc/models/; stops the process."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    port: list[str] = []

    def drain() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            if not port and (match := LISTEN.search(line)):
                port.append(match.group(1))

    threading.Thread(target=drain, daemon=True).start()
    try:
        with httpx.Client(timeout=5) as client:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"{command[0]} exited with {proc.returncode}")
                if port:
                    try:
                        response = client.get(f"http://127.0.0.1:{port[0]}/aigc/models/")
                        if response.status_code == 200:
                            return time.perf_counter() - started
                    except httpx.TransportError:
                        pass
                time.sleep(0.005)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="repetitions of each case")
    args = parser.parse_args()

    env = {k: v for k, v in os.environ.items() if not k.startswith("FENGCHAO_")}
    env["FENGCHAO_LOG_LEVEL"] = "WARNING"
    serve = [str(BIN / "fengchao"), "serve", "--port", "0"]
    results: dict[str, list[float]] = {"anchor": [], "cold": [], "warm": []}
    with tempfile.TemporaryDirectory() as scratch:
        (Path(scratch) / "hello_app.py").write_text(HELLO_APP)
        anchor = [str(BIN / "python"), "-m", "uvicorn", "hello_app:app", "--port", "0"]
        for run in range(args.runs):
            data_dir = Path(scratch) / f"data-{run}"
            run_env = {**env, "FENGCHAO_DATA_DIR": str(data_dir)}
            results["anchor"].append(time_to_first_request(anchor, env, scratch))
            results["cold"].append(time_to_first_request(serve, run_env, scratch))
            results["warm"].append(time_to_first_request(serve, run_env, scratch))

    anchor_median = statistics.median(results["anchor"])
    print(f"start-up to first GET /aigc/models/ ({args.runs} runs each, seconds)")
    print(f"{'case':<8} {'median':>8} {'min':>8} {'max':>8} {'x anchor':>9}")
    for case, values in results.items():
        median = statistics.median(values)
        print(
            f"{case:<8} {median:8.3f} {min(values):8.3f} {max(values):8.3f}"
            f" {median / anchor_median:9.2f}"
        )


if __name__ == "__main__":
    main()
