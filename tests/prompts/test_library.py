"""The packaged instruction library: all 22 seed instructions, rendered both ways."""

from __future__ import annotations

import re
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from fengchao_chains.prompts import (
    PromptError,
    PromptLibrary,
    PromptRenderError,
    get_prompt_library,
)

SEED_INSTRUCTIONS = [
    "默认", "知识库", "中译英", "多译英", "多译中", "韩译中", "日译中", "英译中", "俄译中",
    "德译中", "法译中", "英文词典", "广告商", "讲故事的人", "担任编剧", "小说家", "词源学家",
    "标题生成器", "正则表达式生成器", "语言检测器", "文章摘要", "问题推荐",
]  # fmt: skip
CJK = re.compile(r"[\u4e00-\u9fff]")
QUERY = "请介绍一下北京的中轴线。"


@pytest.fixture(scope="module")
def library() -> PromptLibrary:
    return get_prompt_library()


def sample_fill(library: PromptLibrary, prompt_id: str) -> dict[str, Any]:
    """A non-default value for every variable, so the test sees it reach the text."""
    fill: dict[str, Any] = {}
    for name, variable in library[prompt_id].variables.items():
        if isinstance(variable.default, int):
            fill[name] = variable.default + 4
        elif isinstance(variable.default, str):
            fill[name] = f"测试值{name}"
        else:
            fill[name] = variable.sample
    return fill


def test_every_seed_instruction_is_there_in_seed_order(library: PromptLibrary) -> None:
    assert list(library) == SEED_INSTRUCTIONS


@pytest.mark.parametrize("prompt_id", SEED_INSTRUCTIONS)
def test_each_instruction_is_a_complete_chinese_prompt(
    library: PromptLibrary, prompt_id: str
) -> None:
    instruction = library[prompt_id]
    assert "\n" not in instruction.description and CJK.search(instruction.description)
    assert len(CJK.findall(instruction.system)) > 40, "a real system description, in Chinese"
    assert "{{ query }}" in instruction.prompt_source or "{{query}}" in instruction.prompt_source
    assert "jiweiGPT" not in instruction.system  # our own texts, not the seed's
    for variable in instruction.variables.values():
        assert CJK.search(variable.description)


@pytest.mark.parametrize("prompt_id", SEED_INSTRUCTIONS)
def test_card_path_and_chat_prompt_template_render_the_same(
    library: PromptLibrary, prompt_id: str
) -> None:
    fill = sample_fill(library, prompt_id)
    messages = library.messages(QUERY, prompt=prompt_id, prompt_fill=fill)
    assert [type(m) for m in messages] == [SystemMessage, HumanMessage]
    system, user = (m.content for m in messages)
    assert system == library[prompt_id].system  # the prefix is the {{ system }} slot
    assert QUERY in user
    for value in fill.values():
        if isinstance(value, int | str):
            assert str(value) in user
    template = library.chat_prompt_template(prompt_id)
    assert template.invoke({"query": QUERY, **fill}).to_messages() == messages


@pytest.mark.parametrize("prompt_id", SEED_INSTRUCTIONS)
def test_a_card_sent_back_as_a_custom_prompt_renders_the_same(
    library: PromptLibrary, prompt_id: str
) -> None:
    """SDK users copy a card's ``prompt`` and edit it; unedited, it must behave the same."""
    card = library[prompt_id].card()
    fill = sample_fill(library, prompt_id)
    by_id = library.render(QUERY, prompt=prompt_id, prompt_fill=fill)
    custom = library.render(QUERY, prompt=card["prompt"], system=card["system"], prompt_fill=fill)
    assert custom == by_id


def test_cards_have_the_sdk_shape(library: PromptLibrary) -> None:
    for card in library.cards():
        assert isinstance(card["id"], str)
        for key in ("prefix", "prompt", "system"):
            assert isinstance(card[key], str)
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", card["created"])
        assert card["prefix"] == "{{ system }}"
    by_id = {card["id"]: card for card in library.cards()}
    assert by_id["标题生成器"]["variables"] == {
        "count": {"description": "要拟定的标题数量", "required": False, "default": 5}
    }


def test_default_system_presents_this_projects_assistant(library: PromptLibrary) -> None:
    system = library.default.system
    assert "蜂巢助手" in system and "fengchao-chains" in system


def test_no_prompt_means_the_default_instruction(library: PromptLibrary) -> None:
    for prompt in (None, "", "   "):
        rendered = library.render("你好", prompt=prompt)
        assert rendered.system == library.default.system
        assert rendered.user == "你好"


def test_knowledge_prompt_lays_out_numbered_chunks_with_title_and_source(
    library: PromptLibrary,
) -> None:
    documents = [
        {"title": "故宫", "source": "news_vector_store/7", "content": "故宫位于中轴线上。"},
        {"title": None, "source": None, "content": "钟鼓楼在北端。"},
    ]
    user = library.render(QUERY, prompt="知识库", prompt_fill={"documents": documents}).user
    assert "【资料1】故宫（来源：news_vector_store/7）\n故宫位于中轴线上。" in user
    assert "【资料2】（无标题）\n钟鼓楼在北端。" in user
    assert user.index("钟鼓楼") < user.index(QUERY)
    empty = library.render(QUERY, prompt="知识库").user
    assert "没有检索到相关资料" in empty


def test_custom_system_replaces_the_default_and_is_not_a_template(
    library: PromptLibrary,
) -> None:
    rendered = library.render("hi", prompt="中译英", system="你是{{ query }}翻译")
    assert rendered.system == "你是{{ query }}翻译"
    assert library.render("hi", system="").system == ""
    assert library.messages("hi", system="")[0] == HumanMessage("hi")


def test_custom_templates_take_prompt_fill_and_the_seed_slot_syntax(
    library: PromptLibrary,
) -> None:
    rendered = library.render(
        "北京",
        prompt="请用{{lang}}介绍{{query}}，不超过{{ n }}字。",
        prompt_fill={"lang": "英文", "n": 50},
    )
    assert rendered.user == "请用英文介绍北京，不超过50字。"
    assert rendered.system == library.default.system
    assert library.render("北京", prompt="介绍<<query>>").user == "介绍北京"


@pytest.mark.parametrize(
    ("prompt", "fill", "message"),
    [
        ("请翻译", {}, r"unknown prompt '请翻译'|must contain the \{\{ query \}\} slot"),
        ("中意英", {}, r"unknown prompt '中意英'; did you mean '中译英'"),
        ("翻译 {{ text }}", {"text": "x"}, r"must contain the \{\{ query \}\} slot"),
        ("{{ query }} {{ lang }}", {}, r"needs prompt_fill to give 'lang'"),
        ("{{ query }}", {"lang": "en"}, r"the custom prompt has no variable 'lang'"),
        (
            "标题生成器",
            {"cnt": 3},
            r"prompt '标题生成器' has no variable 'cnt' \(it takes: count\)",
        ),
        ("中译英", {"tone": "x"}, r"has no variable 'tone' \(it takes: no variables\)"),
        ("中译英", {"query": "x"}, r"prompt_fill cannot set 'query'"),
        ("{{ query", {}, r"line 1: unexpected end of template"),
    ],
)
def test_bad_prompts_are_parameter_errors_that_say_what_to_fix(
    library: PromptLibrary, prompt: str, fill: dict[str, Any], message: str
) -> None:
    with pytest.raises(PromptError) as caught:
        library.render("q", prompt=prompt, prompt_fill=fill)
    assert caught.value.code == 445
    assert re.search(message, str(caught.value)), str(caught.value)


def test_history_goes_between_system_and_the_new_question(library: PromptLibrary) -> None:
    history = [
        {"role": "user", "content": "作为营销专家，为我的产品写个 slogan"},
        {"role": "assistant", "content": "当然，请介绍一下产品"},
    ]
    messages = library.messages("是一款茶饮", prompt="广告商", history=history)
    assert [type(m) for m in messages] == [SystemMessage, HumanMessage, AIMessage, HumanMessage]
    assert messages[1].content == history[0]["content"]
    template = library.chat_prompt_template("广告商")
    past = [HumanMessage(history[0]["content"]), AIMessage(history[1]["content"])]
    assert template.invoke({"query": "是一款茶饮", "history": past}).to_messages() == messages
    with pytest.raises(PromptRenderError, match=r"history\[0\] must be"):
        library.messages("q", history=[{"role": "robot", "content": "x"}])


def test_chat_prompt_template_input_schema_shows_every_input(library: PromptLibrary) -> None:
    schema = library.chat_prompt_template("标题生成器").get_input_jsonschema()
    assert schema["required"] == ["query"]
    assert set(schema["properties"]) == {"query", "system", "history", "count"}
    properties = schema["properties"]
    assert properties["count"]["type"] == "integer"
    assert properties["count"]["default"] == 5  # the variable's own default, not null
    assert properties["system"]["default"].startswith("你是一位")
    assert properties["history"]["default"] == []


def test_optional_inputs_given_as_null_take_their_defaults(library: PromptLibrary) -> None:
    """LangServe's playground sends every field, an empty optional one as null."""
    template = library.chat_prompt_template("标题生成器")
    given = template.invoke({"query": "秋天", "system": None, "history": None, "count": None})
    assert given.to_messages() == template.invoke({"query": "秋天"}).to_messages()


def test_chat_prompt_template_composes_with_overrides(library: PromptLibrary) -> None:
    template = library.chat_prompt_template("文章摘要")
    messages = template.invoke({"query": "正文", "system": "简洁", "max_chars": 50}).to_messages()
    assert messages[0] == SystemMessage("简洁")
    assert "50" in messages[1].content
    custom = library.chat_prompt_template("总结：{{ query }}")
    assert custom.invoke({"query": "正文"}).to_messages()[1] == HumanMessage("总结：正文")
