"""The published fengchao SDK (2.5.1), unchanged, in its own virtual environment.

It pins pydantic 2.6.1 and requests 2.31.0, so it cannot share the project's environment.
The venv is built once per machine next to the project's venv and reused.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.venvs import built_venv

SDK_REQUIREMENT = "fengchao==2.5.1"
SDK_VENV = Path(sys.prefix) / "fengchao-sdk-2.5.1"
DEFAULT_API_KEY = "sdk-test-key"
DEFAULT_SECRET_KEY = "sdk-test-secret"


def sdk_python() -> Path:
    """The SDK venv's interpreter, creating the venv on first use."""
    return built_venv(SDK_VENV, [SDK_REQUIREMENT], timeout=600)


def run_sdk(
    script: str,
    base_url: str,
    timeout: float = 120,
    *,
    api_key: str = DEFAULT_API_KEY,
    secret_key: str = DEFAULT_SECRET_KEY,
) -> Any:
    """Run ``script`` with the SDK imported and ``client`` bound to ``base_url`` with the key
    pair (the defaults suit calls that need no key); the script sets ``result``, which comes
    back through JSON."""
    program = (
        "import json\n"
        "from fengchao import FengChao\n"
        f"client = FengChao(api_key={api_key!r}, secret_key={secret_key!r},"
        f" base_url={base_url!r})\n"
        f"{script}\n"
        "print(json.dumps(result, ensure_ascii=False, default=str))\n"
    )
    completed = subprocess.run(
        [str(sdk_python()), "-c", program],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if completed.returncode != 0:
        raise AssertionError(f"SDK script failed:\n{completed.stderr}")
    return json.loads(completed.stdout.strip().splitlines()[-1])
