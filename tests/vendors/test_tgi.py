"""What only the TGI chat model does, against the fake TGI: the ``/generate_stream`` route
with the model's chat template, the fallback from the Messages API, ``/info`` and
``/health``, stop sequences and parameter mapping. The behaviour every vendor shares is in
``test_contract.py``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fengchao_chains.errors import ConfigurationError
from fengchao_chains.llms._chat_template import QWEN_CHATML, render_chat_template
from fengchao_chains.llms.errors import InvalidRequestError
from fengchao_chains.llms.tgi import ChatTGI
from fengchao_chains.testing.fakes.tgi import FakeTGI
from tests.vendors.checks import summed
from tests.vendors.harness import TGI, TGI_TOKEN

fake, url, model = TGI.fixtures()


def generate(url: str, **kwargs: object) -> ChatTGI:
    return ChatTGI(
        model="Qwen/Qwen1.5-0.5B-Chat", base_url=url, api_key=TGI_TOKEN, api="generate", **kwargs
    )


def routes(fake: FakeTGI) -> list[str]:
    return [r["path"] for r in fake.requests]


def test_generate_route_renders_qwen_chatml_and_reads_usage(fake: FakeTGI, url: str) -> None:
    chat = generate(url)
    answer = chat.invoke([("system", "Be brief."), ("human", "hello world")])
    assert answer.content == "Echo: hello world"
    sent = fake.last_request["body"]
    assert sent["inputs"] == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nhello world<|im_end|>\n<|im_start|>assistant\n"
    )
    assert sent["parameters"]["details"] is True
    assert answer.usage_metadata is not None
    assert answer.usage_metadata["input_tokens"] > 5  # the template's markers count
    assert "usage_estimated" not in answer.response_metadata
    assert answer.response_metadata["finish_reason"] == "stop"
    assert routes(fake) == ["/"]  # huggingface_hub posts text generation to the root


def test_generate_route_inserts_qwen_default_system_prompt(fake: FakeTGI, url: str) -> None:
    generate(url).invoke("hi")
    assert fake.last_request["body"]["inputs"].startswith(
        "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n<|im_start|>user\nhi"
    )


def test_generate_route_maps_parameters(fake: FakeTGI, url: str) -> None:
    chat = generate(url, temperature=0, top_p=1.0, max_tokens=3)
    answer = chat.invoke("one two three four five")
    parameters = fake.last_request["body"]["parameters"]
    assert parameters["do_sample"] is False
    assert "temperature" not in parameters and "top_p" not in parameters
    assert parameters["max_new_tokens"] == 3
    assert answer.response_metadata["finish_reason"] == "length"
    with pytest.raises(InvalidRequestError, match="no parameter logprobs"):
        chat.invoke("hi", logprobs=True)


def test_old_tgi_without_input_length_gets_flagged_estimate(fake: FakeTGI, url: str) -> None:
    fake.stream_input_length = False
    try:
        answer = generate(url).invoke("hello world")
    finally:
        fake.stream_input_length = True
    assert answer.usage_metadata is not None
    assert answer.usage_metadata["output_tokens"] == 5
    assert answer.response_metadata["usage_estimated"] is True


@pytest.mark.parametrize("api", ["messages", "generate"])
async def test_stop_sequence_is_not_part_of_the_answer(fake: FakeTGI, url: str, api: str) -> None:
    chat = generate(url).model_copy(update={"api": api})
    stop = ["beta gam"]  # spans two tokens: the first is held back until the stop is sure
    answer = chat.invoke("alpha beta gamma delta", stop=stop)
    chunks = [c async for c in chat.astream("alpha beta gamma delta", stop=stop)]
    assert answer.content == summed(chunks).content == "Echo: alpha "
    assert answer.response_metadata["finish_reason"] == "stop"
    held = [c for c in chunks if "beta" in str(c.content)]
    assert held == []  # the stop text was never streamed


async def test_auto_falls_back_to_generate_stream_once(fake: FakeTGI, url: str) -> None:
    fake.messages_api = False
    fake.model_id = "Qwen/Qwen1.5-1.8B-Chat"
    try:
        chat = ChatTGI(model="qwen", base_url=url, api_key=TGI_TOKEN)
        first = await chat.ainvoke("hello world")
        second = chat.invoke("hello world")
    finally:
        fake.messages_api = True
        fake.model_id = "Qwen/Qwen1.5-0.5B-Chat"
    assert first.content == second.content == "Echo: hello world"
    assert routes(fake) == ["/v1/chat/completions", "/info", "/", "/"]
    assert first.response_metadata["model_name"] == "Qwen/Qwen1.5-1.8B-Chat"  # from /info


def test_a_stream_falls_back_and_names_the_served_model(fake: FakeTGI, url: str) -> None:
    fake.messages_api = False
    fake.model_id = "Qwen/Qwen1.5-1.8B-Chat"
    try:
        chunks = list(ChatTGI(model="qwen", base_url=url, api_key=TGI_TOKEN).stream("hi there"))
    finally:
        fake.messages_api = True
        fake.model_id = "Qwen/Qwen1.5-0.5B-Chat"
    total = summed(chunks)
    assert total.content == "Echo: hi there"
    assert total.response_metadata["model_name"] == "Qwen/Qwen1.5-1.8B-Chat"
    assert routes(fake) == ["/v1/chat/completions", "/info", "/"]


def test_messages_api_only_does_not_fall_back(fake: FakeTGI, url: str) -> None:
    fake.messages_api = False
    try:
        chat = ChatTGI(model="qwen", base_url=url, api_key=TGI_TOKEN, api="messages")
        with pytest.raises(InvalidRequestError) as caught:
            chat.invoke("hi")
    finally:
        fake.messages_api = True
    assert caught.value.status_code == 404


def test_messages_api_sends_extra_parameters_in_the_body(fake: FakeTGI, url: str) -> None:
    chat = ChatTGI(
        model="Qwen/Qwen1.5-0.5B-Chat",
        base_url=url,
        api_key=TGI_TOKEN,
        model_kwargs={"seed": 7, "repetition_penalty": 1.1},
    )
    chat.invoke("hi")
    body = fake.last_request["body"]
    assert body["seed"] == 7 and body["repetition_penalty"] == 1.1
    assert body["model"] == "Qwen/Qwen1.5-0.5B-Chat"


async def test_server_info_and_health(fake: FakeTGI, url: str, model: ChatTGI) -> None:
    info = model.server_info()
    assert info["model_id"] == "Qwen/Qwen1.5-0.5B-Chat"
    assert info["max_total_tokens"] == fake.context_window
    assert (await model.aserver_info()) == info
    assert model.is_healthy() and await model.ais_healthy()
    fake.healthy = False
    try:
        assert not model.is_healthy()
        assert not await model.ais_healthy()
    finally:
        fake.healthy = True


def test_chat_template_from_files(tmp_path: Path, fake: FakeTGI, url: str) -> None:
    config = tmp_path / "tokenizer_config.json"
    config.write_text(json.dumps({"chat_template": "{{ messages[-1]['content'] }}!"}))
    generate(url, chat_template=str(config)).invoke("hello world")
    assert fake.last_request["body"]["inputs"] == "hello world!"
    jinja = tmp_path / "template.jinja"
    jinja.write_text(QWEN_CHATML)
    generate(url, chat_template=str(jinja)).invoke("hi")
    assert "<|im_start|>user\nhi<|im_end|>" in fake.last_request["body"]["inputs"]
    with pytest.raises(ConfigurationError, match="cannot be read"):
        generate(url, chat_template=str(tmp_path / "missing.jinja")).invoke("hi")


def test_a_template_that_refuses_the_conversation_is_a_clear_error(url: str) -> None:
    refusing = "{{ raise_exception('roles must alternate') }}"
    with pytest.raises(InvalidRequestError, match="roles must alternate"):
        generate(url, chat_template=refusing).invoke("hi")


def test_render_matches_transformers_whitespace_rules() -> None:
    """trim_blocks / lstrip_blocks as transformers sets them."""
    template = "{% for m in messages %}\n  {{ m['content'] }}\n{% endfor %}"
    assert render_chat_template(template, [{"role": "user", "content": "a"}]) == "  a\n"
