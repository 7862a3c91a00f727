"""Prompt files: a broken file stops start-up with its name and line; extra directories and
reloads."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fengchao_chains.errors import ConfigurationError
from fengchao_chains.prompts import PromptFileError, PromptLibrary, packaged_prompt_dir
from fengchao_chains.runtime import Runtime
from fengchao_chains.settings import Settings

GOOD = """{#
id = "润色"
description = "润色中文文本"

[variables.style]
description = "风格"
default = "简洁"
#}
{% block system %}
你是一位中文编辑。
{% endblock %}

{% block prefix %}{{ system }}{% endblock %}

{% block prompt %}
请用{{ style }}的风格润色：{{ query }}
{% endblock %}
"""


def write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def load(directory: Path) -> PromptLibrary:
    return PromptLibrary([packaged_prompt_dir(), directory])


def test_an_extra_directory_adds_instructions(tmp_path: Path) -> None:
    write(tmp_path, "polish.jinja", GOOD)
    library = load(tmp_path)
    assert list(library)[-1] == "润色"
    assert library.render("文本", prompt="润色").user == "请用简洁的风格润色：文本"
    assert library.render("文本", prompt="润色", prompt_fill={"style": "活泼"}).user == (
        "请用活泼的风格润色：文本"
    )


def test_an_extra_directory_replaces_a_packaged_instruction_in_place(tmp_path: Path) -> None:
    own_default = GOOD.replace('id = "润色"', 'id = "默认"').replace("中文编辑", "我们的助手")
    write(tmp_path, "default.jinja", own_default)
    library = load(tmp_path)
    assert next(iter(library)) == "默认"
    assert library.default.system == "你是一位我们的助手。"
    assert library.default.path == tmp_path / "default.jinja"


BROKEN = [
    # (what is wrong, file text, line, message)
    ("syntax", GOOD.replace("{{ query }}\n", "{{ query }\n"), 16, "unexpected '}'"),
    ("no query slot", GOOD.replace("{{ query }}", "原文"), 15, r"has no \{\{ query \}\} slot"),
    ("no system slot", GOOD.replace("{{ system }}", "系统"), 13, r"has no \{\{ system \}\} slot"),
    ("undeclared", GOOD.replace("{{ style }}", "{{ tone }}"), 15, "uses 'tone', not declared"),
    ("unused", GOOD.replace("{{ style }}的风格", ""), 1, "declares 'style' but never uses it"),
    ("system uses vars", GOOD.replace("中文编辑", "{{ style }}编辑"), 9, "must be plain text"),
    ("no front matter", GOOD[GOOD.index("#}") + 2 :], 1, r"must start with a \{# ... #\}"),
    ("bad toml", GOOD.replace('id = "润色"', "id = 润色"), 2, "front matter is not valid TOML"),
    ("no id", GOOD.replace('id = "润色"\n', ""), None, r"id: Field required"),
    ("unknown key", GOOD.replace('id = "润色"', 'id = "润色"\nname = "x"'), None, "name: Extra"),
    ("stray text", GOOD + "\n多余的文字\n", 19, "text outside the blocks"),
    ("unknown block", GOOD.replace("block prefix", "block header"), 13, "unknown block 'header'"),
    ("no prompt", GOOD[: GOOD.index("{% block prompt")], 1, r"has no \{% block prompt %\}"),
    ("unsafe", GOOD.replace("{{ query }}", "{{ query.__class__ }}{{ query }}"), 16,
     "may not use the attribute '__class__'"),
    ("macro", GOOD.replace("请用", "{% macro m() %}{% endmacro %}请用"), 16, "may not use macros"),
    ("bad variable",
     GOOD.replace("variables.style", "variables.loop").replace("style }}", "loop }}"), None,
     "'loop' cannot be a variable name"),
    ("required without example",
     GOOD.replace('default = "简洁"', ""), None, "'style' has no default, so it needs an example"),
    ("trial render fails", GOOD.replace('default = "简洁"', "default = 3").replace(
        "{{ style }}", "{{ style|join(',') }}"), None, "prompt template failed"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "line", "message"), [b[1:] for b in BROKEN],
                         ids=[b[0] for b in BROKEN])  # fmt: skip
def test_a_broken_file_names_the_file_and_line(
    tmp_path: Path, text: str, line: int | None, message: str
) -> None:
    path = write(tmp_path, "polish.jinja", text)
    with pytest.raises(PromptFileError) as caught:
        load(tmp_path)
    error = str(caught.value)
    assert error.startswith(f"prompt file {path}: "), error
    if line is not None:
        assert f"{path}: line {line}: " in error, error
    assert re.search(message, error), error
    assert "\n" not in error


def test_every_broken_file_is_reported_at_once(tmp_path: Path) -> None:
    write(tmp_path, "a.jinja", GOOD.replace("{{ query }}", "x"))
    write(tmp_path, "b.jinja", "{# id = 'b' #}{% block prompt %}{{ query }{% endblock %}")
    with pytest.raises(PromptFileError, match=r"^2 broken prompt files: .*a\.jinja.*; .*b\.jinja"):
        load(tmp_path)


def test_two_files_with_one_id_in_a_directory_are_an_error(tmp_path: Path) -> None:
    write(tmp_path, "a.jinja", GOOD)
    write(tmp_path, "b.jinja", GOOD)
    with pytest.raises(PromptFileError, match=r"b\.jinja: id '润色' is used by .*a\.jinja too"):
        load(tmp_path)


def test_a_missing_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(PromptFileError, match="does not exist"):
        load(tmp_path / "nope")


def test_reload_picks_up_edits_and_keeps_the_old_library_on_errors(tmp_path: Path) -> None:
    path = write(tmp_path, "polish.jinja", GOOD)
    library = load(tmp_path)
    path.write_text(GOOD.replace("请用", "麻烦用"), encoding="utf-8")
    write(tmp_path, "more.jinja", GOOD.replace('id = "润色"', 'id = "改写"'))
    library.reload()
    assert library.render("x", prompt="润色").user.startswith("麻烦用")
    assert "改写" in library
    path.write_text(GOOD.replace("{{ query }}", ""), encoding="utf-8")
    with pytest.raises(PromptFileError, match=r"polish\.jinja"):
        library.reload()
    assert library.render("x", prompt="润色").user.startswith("麻烦用")


def test_a_broken_prompt_file_stops_the_runtime_before_the_database(
    settings: Settings, tmp_path: Path
) -> None:
    path = write(tmp_path / "prompts", "polish.jinja", GOOD.replace("{{ query }}", "原文"))
    broken = settings.model_copy(update={"prompt_dirs": [tmp_path / "prompts"]})
    with pytest.raises(ConfigurationError, match=rf"^prompt file {re.escape(str(path))}: line 15"):
        Runtime.start(broken)
