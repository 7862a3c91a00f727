"""The built wheel carries its data: the catalog, the migrations and the prompt library."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from fengchao_chains.catalog import load_catalog
from fengchao_chains.db.migrate import discover_migrations
from fengchao_chains.prompts import PromptLibrary

REPO = Path(__file__).resolve().parents[1]


def test_wheel_contains_data_files_and_runs_from_site_packages(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        timeout=300,
    )
    wheel = next(tmp_path.glob("fengchao_chains-*.whl"))
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        timeout=300,
    )
    probe = (
        "import json, fengchao_chains\n"
        "from fengchao_chains.catalog import load_catalog\n"
        "from fengchao_chains.db.migrate import discover_migrations\n"
        "from fengchao_chains.prompts import PromptLibrary, packaged_prompt_dir\n"
        "print(json.dumps({'file': fengchao_chains.__file__, 'models': len(load_catalog()),\n"
        "                  'migrations': [m.name for m in discover_migrations()],\n"
        "                  'prompt_dir': str(packaged_prompt_dir()),\n"
        "                  'prompts': list(PromptLibrary())}, ensure_ascii=False))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    result = json.loads(out.stdout)
    assert result["file"].startswith(str(target))  # the wheel's copy, not the source tree
    assert result["models"] == len(load_catalog())
    assert result["migrations"] == [m.name for m in discover_migrations()]
    assert result["prompt_dir"] == str(target / "fengchao_chains" / "_prompt_library")
    assert result["prompts"] == list(PromptLibrary())
