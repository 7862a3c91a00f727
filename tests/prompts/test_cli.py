"""``fengchao prompts``: list, show, render, check; errors on stderr with exit codes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.processes import clean_env, run_cli


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return run_cli("prompts", *args, env=clean_env(**env))


def test_list_as_json_gives_the_cards() -> None:
    result = cli("list", "--json")
    assert result.returncode == 0, result.stderr
    cards = json.loads(result.stdout)
    assert len(cards) == 22
    assert cards[-1]["id"] == "问题推荐"
    assert cards[-1]["variables"]["count"]["default"] == 3


def test_list_as_a_table() -> None:
    result = cli("list")
    assert result.returncode == 0
    assert "22 prompts" in result.stdout
    assert "标题生成器" in result.stdout and "count=5" in result.stdout


def test_show_prints_every_part() -> None:
    result = cli("show", "标题生成器")
    assert result.returncode == 0, result.stderr
    assert "variable:    count (default 5): 要拟定的标题数量" in result.stdout
    for part in ("--- system ---", "--- prefix ---", "--- prompt ---", "{{ count }}"):
        assert part in result.stdout


def test_show_an_unknown_id_suggests_close_ones() -> None:
    result = cli("show", "标题生成")
    assert result.returncode == 1
    assert result.stderr.strip() == "error: unknown prompt '标题生成'; did you mean '标题生成器'?"


def test_render_fills_variables_from_json_values() -> None:
    result = cli("render", "标题生成器", "--query", "北京的秋天", "--var", "count=7", "--json")
    assert result.returncode == 0, result.stderr
    rendered = json.loads(result.stdout)
    assert "7 个标题" in rendered["user"] and "北京的秋天" in rendered["user"]
    assert rendered["system"].startswith("你是一位经验丰富的编辑")


def test_render_a_custom_template_and_system() -> None:
    result = cli("render", "翻译成英文：{{query}}", "-q", "你好", "--system", "你是译者")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "--- system ---\n你是译者\n\n--- user ---\n翻译成英文：你好"


def test_render_refuses_an_unsafe_template_with_one_line() -> None:
    result = cli("render", "{{ cycler.__init__.__globals__ }}{{ query }}", "-q", "x")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: line 1: prompt templates may not use the attribute '__globals__'"
    )
    assert result.stdout == ""


def test_render_with_a_malformed_var_is_a_usage_error() -> None:
    result = cli("render", "标题生成器", "-q", "x", "--var", "count")
    assert result.returncode == 2
    assert "is not NAME=VALUE" in result.stderr


def test_check_reports_a_broken_extra_directory(tmp_path: Path) -> None:
    (tmp_path / "bad.jinja").write_text(
        '{#\nid = "x"\ndescription = "x"\n#}\n{% block system %}s{% endblock %}\n'
        "{% block prompt %}no slot{% endblock %}\n",
        encoding="utf-8",
    )
    result = cli("check", FENGCHAO_PROMPT_DIRS=str(tmp_path))
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"error: prompt file {tmp_path / 'bad.jinja'}: line 6: the prompt block has no"
        " {{ query }} slot"
    )
    good = cli("check")
    assert good.returncode == 0
    assert good.stdout.startswith("22 prompts OK")


def test_serve_with_a_broken_prompt_file_exits_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "bad.jinja").write_text(
        '{#\nid = "x"\ndescription = "x"\n#}\n{% block system %}s{% endblock %}\n'
        "{% block prompt %}{{ query }{% endblock %}\n",
        encoding="utf-8",
    )
    result = run_cli(
        "serve", "--port", "0",
        env=clean_env(FENGCHAO_PROMPT_DIRS=str(tmp_path), FENGCHAO_DATA_DIR=str(tmp_path / "d")),
    )  # fmt: skip
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0] == f"error: prompt file {tmp_path / 'bad.jinja'}: line 6: unexpected '}}'"
    assert not (tmp_path / "d" / "pgdata").exists()  # stopped before the database started
