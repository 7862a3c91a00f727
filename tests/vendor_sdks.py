"""The vendors' official Python SDKs, each run unchanged against our fake servers.

They pin each other's dependencies in incompatible ways (zhipuai 2.x and qianfan cannot
share an environment), so they live in virtual environments of their own, built once per
machine next to the project's venv and reused. A script runs in a child process and hands
its ``result`` back through JSON.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.venvs import built_venv

SDK_GROUPS: dict[str, tuple[str, ...]] = {
    "openai": ("openai==3.54.0",),
    "anthropic": ("anthropic==2.12.0",),
    "zhipuai": ("zhipuai==2.1.5.20250825", "sniffio==1.3.1"),
    "qianfan": ("qianfan==0.4.12.3",),
    "sensenova": ("sensenova==1.0.6",),
    "volcengine": ("volcengine==1.0.229", "volcengine-ark-runtime==5.0.54"),
    "text-generation": ("text-generation==0.7.0",),
    # LangChain's own classes for two vendors, the second anchor of bench/vendor_overhead.py
    "langchain-anthropic": ("langchain-anthropic==1.7.7", "anthropic==2.12.0"),
    "langchain-community": ("langchain-community==0.4.2", "volcengine==1.0.229"),
}
"""Which venv holds which SDK, with exact versions (the ones vendors.md was checked against)."""


def sdk_python(group: str) -> Path:
    """The interpreter of ``group``'s venv, building the venv on first use."""
    requirements = SDK_GROUPS[group]
    digest = hashlib.sha256("\n".join(requirements).encode()).hexdigest()[:10]
    root = Path(sys.prefix) / "vendor-sdks" / f"{group}-{digest}"
    return built_venv(root, requirements, timeout=900)


def run_vendor_sdk(
    group: str, script: str, *, env: dict[str, str] | None = None, timeout: float = 120
) -> Any:
    """Run ``script`` in ``group``'s venv; it must set ``result`` (JSON-serialisable).
    A script that raises fails the calling test with the SDK's traceback."""
    program = f"import json\n{script}\nprint('@@RESULT@@' + json.dumps(result, default=str))\n"
    completed = subprocess.run(
        [str(sdk_python(group)), "-c", program],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={"PATH": "/usr/bin:/bin", "HOME": str(Path.home()), **(env or {})},
    )
    if completed.returncode != 0:
        raise AssertionError(f"{group} SDK script failed:\n{completed.stderr[-4000:]}")
    marker = completed.stdout.rindex("@@RESULT@@")
    return json.loads(completed.stdout[marker + len("@@RESULT@@") :].strip())
