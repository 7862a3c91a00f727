"""Virtual environments the tests build once per machine next to the project's venv (the
published fengchao SDK, the vendors' official SDKs) and reuse.

The test suite runs in several worker processes (pytest-xdist), so two tests in two workers
may ask for the same venv on a fresh machine: a file lock lets one build it while the other
waits, and a marker written last tells a finished venv from a half-built one.
"""

from __future__ import annotations

import subprocess
import venv
from collections.abc import Sequence
from pathlib import Path

from filelock import FileLock


def built_venv(root: Path, requirements: Sequence[str], *, timeout: float) -> Path:
    """The interpreter of the venv at ``root`` with ``requirements`` installed, building it
    (under a lock) if no finished one is there."""
    python = root / "bin" / "python"
    marker = root / ".installed"
    if marker.exists():
        return python
    root.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{root}.lock", timeout=timeout):
        if not marker.exists():  # not built by another worker while this one waited
            venv.create(root, with_pip=True, clear=True)
            pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
            subprocess.run(
                [*pip, *requirements],
                check=True,
                timeout=timeout,
            )
            marker.touch()
    return python
