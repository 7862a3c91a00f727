"""The published fengchao SDK 2.5.1, unchanged and in its own venv, against a real server.

One ``fengchao serve`` process for the module (its key made by ``fengchao keys create``, two
news items loaded by ``fengchao ingest``), online models answered by a fake OpenAI that
echoes the last user message. Every call the SDK offers goes over real HTTP: the catalogs,
uploads, chat in its four modes, ``FengChaoAsync``, its retry hooks and self-signed tokens,
local-model routing, knowledge-base chat and the sensitive-word codes.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from fengchao_chains.testing.fakes._common import echo, split_tokens
from tests.clients import (
    LOCAL_MODEL,
    NEWS_STORE,
    ONLINE_MODEL,
    PACED,
    Gateway,
    running_gateway,
)
from tests.loopback import LoopbackServer
from tests.sdk import run_sdk

SENSITIVE_WORD = "赌博网站"  # in fengchao_chains/gateway/sensitive_words.txt
NEWS = [
    {
        "id": "clients-beer",
        "title": "青岛国际啤酒节在金沙滩啤酒城开幕",
        "url": "https://news.example/beer",
        "content": "第三十四届青岛国际啤酒节7月19日在西海岸新区金沙滩啤酒城开幕，为期24天，"
        "来自全球的1500余款啤酒参展，主办方预计接待游客超过600万人次。",
    },
    {
        "id": "clients-moon",
        "title": "嫦娥六号在月球背面完成采样",
        "url": "https://news.example/moon",
        "content": "嫦娥六号探测器在月球背面南极-艾特肯盆地完成智能快速采样，"
        "样品封装在上升器携带的贮存装置中，这是人类首次从月球背面采集样品。",
    },
]
DUMP = """
def dump(response):
    data = response.data
    if hasattr(data, 'model_dump'):
        data = data.model_dump()
    return {'status': response.status, 'msg': response.msg, 'data': data}
"""


@pytest.fixture(scope="module")
def gateway(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with running_gateway(postgres_url, tmp_path_factory.mktemp("sdk-gateway")) as started:
        summary = started.ingest(NEWS)
        assert summary, summary
        yield started


@pytest.fixture(autouse=True)
def plain_echo(gateway: Gateway) -> Iterator[None]:
    """Every test starts with the fake echoing, pacing its streams and no scripted faults."""
    gateway.openai.reply = echo
    gateway.openai.clear_faults()
    yield
    gateway.openai.reply = echo
    gateway.openai.event_interval = PACED
    gateway.openai.clear_faults()


def sdk(gateway: Gateway, script: str, *, secret_key: str | None = None, **keys: str) -> Any:
    """Run ``script`` in the SDK's venv with ``client`` signed in with the gateway's key."""
    return run_sdk(
        DUMP + script,
        gateway.base_url,
        timeout=150,
        api_key=keys.get("api_key", gateway.api_key),
        secret_key=secret_key or gateway.secret_key,
    )


def text_of(chunks: list[dict[str, Any]]) -> str:
    return "".join(
        choice["message"]["content"] for chunk in chunks for choice in chunk["data"]["choices"]
    )


# --------------------------------------------------------------------------- catalogs ----
def test_models_prompts_and_knowledge_bases(gateway: Gateway) -> None:
    result = sdk(
        gateway,
        "result = {'models': dump(client.models()), 'prompts': dump(client.prompts()),\n"
        "          'kgs': dump(client.kgs()),\n"
        f"          'local': client.check_model_channel({LOCAL_MODEL!r}),\n"
        f"          'online': client.check_model_channel({ONLINE_MODEL!r})}}",
    )
    assert result["models"]["status"] == 200
    models = {card["id"]: card for card in result["models"]["data"]["data"]}
    assert {ONLINE_MODEL, LOCAL_MODEL} <= set(models)
    assert models[ONLINE_MODEL]["mode"] == ["invoke", "async", "async_result", "stream"]
    assert (result["local"], result["online"]) == ("本地模型", "在线模型")
    assert result["prompts"]["status"] == 200
    prompts = {card["id"] for card in result["prompts"]["data"]["data"]}
    assert {"默认", "知识库"} <= prompts
    assert result["kgs"]["status"] == 200
    assert NEWS_STORE in {card["id"] for card in result["kgs"]["data"]["data"]}


# --------------------------------------------------------------------------- chat modes --
def test_invoke_gives_the_whole_answer_with_usage_and_the_sdk_sampling(gateway: Gateway) -> None:
    result = sdk(
        gateway,
        f"response = client.chat({ONLINE_MODEL!r}, query='介绍一下北京', request_id='sdk-rid-1')\n"
        "result = dump(response)",
    )
    assert result["status"] == 200, result
    data = result["data"]
    assert (data["request_id"], data["model"], data["status"]) == ("sdk-rid-1", ONLINE_MODEL, 200)
    assert data["choices"][0]["message"] == {"role": "assistant", "content": "Echo: 介绍一下北京"}
    assert data["choices"][0]["finish_reason"] == "stop"
    usage = data["usage"]
    assert usage["completion_tokens"] == 8  # Echo, :, 介, 绍, 一, 下, 北, 京 (the fake counts)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["cost"] > 0  # gpt-3.5-turbo has a price
    assert (data["search"], data["agg"], data["knowledge"]) == ([], [], [])
    # the SDK's defaults reached the vendor as sampling parameters
    sent = gateway.openai.last_request["body"]
    assert (sent["temperature"], sent["top_p"], sent["max_tokens"]) == (0.8, 0.75, 256)


def test_stream_delivers_chinese_text_in_order(gateway: Gateway) -> None:
    # a long answer, so the stream has many chunks
    query = "请讲一讲长城的历史：它最早在什么时候开始修建，明朝为什么又要大规模重修，今天还剩多长"
    result = sdk(
        gateway,
        f"chunks = client.chat({ONLINE_MODEL!r}, query={query!r}, mode='stream')\n"
        "result = [dump(chunk) for chunk in chunks]",
    )
    assert all(chunk["status"] == 200 for chunk in result), result
    assert len(result) > 10, result  # streamed in pieces, then the closing chunk
    assert text_of(result) == f"Echo: {query}"
    closing = result[-1]["data"]
    assert closing["choices"][0] == {
        "index": len(result) - 1,
        "message": {"role": "assistant", "content": ""},
        "finish_reason": "stop",
    }
    assert closing["usage"]["completion_tokens"] == len(split_tokens(f"Echo: {query}"))
    assert [c["data"]["choices"][0]["index"] for c in result] == list(range(len(result)))
    assert all(c["data"]["choices"][0]["finish_reason"] is None for c in result[:-1])


def test_a_burst_reaches_the_sdk_as_one_line_of_text(gateway: Gateway) -> None:
    gateway.openai.event_interval = 0.0  # the whole stream in one write
    query = "请讲一讲长城的历史"
    result = sdk(
        gateway,
        f"chunks = client.chat({ONLINE_MODEL!r}, query={query!r}, mode='stream')\n"
        "result = [dump(chunk) for chunk in chunks]",
    )
    assert [chunk["status"] for chunk in result] == [200, 200], result
    assert [chunk["data"]["choices"][0]["message"]["content"] for chunk in result] == [
        f"Echo: {query}",
        "",
    ]
    assert result[-1]["data"]["usage"]["completion_tokens"] == len(split_tokens(f"Echo: {query}"))


def test_async_then_async_result_until_ready(gateway: Gateway) -> None:
    gateway.openai.inject("slow", delay=1.5)  # the task is still running at the first poll
    result = sdk(
        gateway,
        "import time\n"
        f"sent = client.chat({ONLINE_MODEL!r}, query='异步：写一句关于秋天的诗', mode='async')\n"
        "polls, deadline = [], time.time() + 60\n"
        "while True:\n"
        f"    got = client.chat({ONLINE_MODEL!r}, mode='async_result', task_id=sent.data)\n"
        "    polls.append(got.status)\n"
        "    if got.status != 6602 or time.time() > deadline:\n"
        "        break\n"
        "    time.sleep(0.2)\n"
        "result = {'sent': dump(sent), 'polls': polls, 'final': dump(got)}",
    )
    sent = result["sent"]
    assert sent["status"] == 200
    assert re.fullmatch(r"[0-9a-f]{32}", sent["data"]), sent
    assert result["polls"][0] == 6602
    assert result["polls"][-1] == 200
    final = result["final"]["data"]
    assert final["choices"][0]["message"]["content"] == "Echo: 异步：写一句关于秋天的诗"
    assert final["usage"]["completion_tokens"] > 0


def test_async_result_of_an_unknown_task_is_445(gateway: Gateway) -> None:
    result = sdk(
        gateway,
        f"result = dump(client.chat({ONLINE_MODEL!r}, mode='async_result', task_id='0' * 32))",
    )
    assert result["status"] == 445
    assert result["data"] is None
    assert json.loads(result["msg"])["status"] == 445  # the raw body, as the SDK shows it


def test_fengchao_async_client(gateway: Gateway) -> None:
    result = sdk(
        gateway,
        "import asyncio\n"
        "from fengchao import FengChaoAsync\n"
        "aclient = FengChaoAsync(client.api_key, client.secret_key, client.base_url)\n"
        "async def main():\n"
        "    answers = await asyncio.gather(*(\n"
        f"        aclient.chat({ONLINE_MODEL!r}, query=f'第{{n}}个问题') for n in range(3)))\n"
        f"    stream = await aclient.chat({ONLINE_MODEL!r}, query='流式回答', mode='stream')\n"
        f"    sent = await aclient.chat({ONLINE_MODEL!r}, query='异步回答', mode='async')\n"
        "    return {'answers': [dump(a) for a in answers],\n"
        "            'stream': [dump(c) for c in stream], 'sent': dump(sent)}\n"
        "result = asyncio.run(main())",
    )
    contents = [a["data"]["choices"][0]["message"]["content"] for a in result["answers"]]
    assert contents == [f"Echo: 第{n}个问题" for n in range(3)]
    assert text_of(result["stream"]) == "Echo: 流式回答"
    assert re.fullmatch(r"[0-9a-f]{32}", result["sent"]["data"])


# --------------------------------------------------------------------------- transport --
class DeadEnd(LoopbackServer):
    """A port that accepts connections and closes them at once (a server that crashed
    mid-request): ``requests`` raises ConnectionError, which the SDK retries."""

    def __init__(self) -> None:
        self.connections = 0
        super().__init__(self._close)

    def _close(self, conn: socket.socket) -> None:
        self.connections += 1
        conn.close()


@pytest.fixture
def dead_end() -> Iterator[DeadEnd]:
    server = DeadEnd()
    yield server
    server.close()


def test_custom_retry_hooks_see_a_failed_attempt_and_the_retry_succeeds(
    gateway: Gateway, dead_end: DeadEnd
) -> None:
    """The client starts on a dead port; its Retry subclass's before_sleep hook moves it to
    the live server, so the second attempt answers (the retry really re-sends)."""
    result = sdk(
        gateway,
        "from fengchao import Retry\n"
        "calls = []\n"
        "class Failover(Retry):\n"
        "    retry_num = 2\n"
        "    def before(self, state): calls.append('before')\n"
        "    def after(self, state): calls.append('after')\n"
        "    def before_sleep(self, state):\n"
        "        calls.append('before_sleep')\n"
        f"        client.base_url = {gateway.base_url!r}\n"
        f"client.base_url = {dead_end.url!r}\n"
        f"response = client.chat({ONLINE_MODEL!r}, query='重试', retry_action=Failover())\n"
        "result = {'response': dump(response), 'calls': calls}",
    )
    assert result["response"]["status"] == 200, result
    assert result["response"]["data"]["choices"][0]["message"]["content"] == "Echo: 重试"
    # /aigc/models/: a failed attempt, its hooks, a good attempt; then the chat POST
    assert result["calls"] == ["before", "after", "before_sleep", "before", "before"]
    assert dead_end.connections == 1


def test_try_num_sets_the_attempts_and_exhausted_retries_are_a_400(
    gateway: Gateway, dead_end: DeadEnd
) -> None:
    result = run_sdk(
        DUMP + f"result = dump(client.chat({ONLINE_MODEL!r}, query='你好', try_num=2))",
        dead_end.url,
        api_key=gateway.api_key,
        secret_key=gateway.secret_key,
    )
    assert result["status"] == 400
    assert result["msg"].startswith("接口异常：RetryError")
    assert dead_end.connections == 4  # two attempts at /aigc/models/, two at /aigc/chat/


def test_the_sdks_self_signed_token_is_accepted(gateway: Gateway) -> None:
    token = sdk(
        gateway,
        "from fengchao.utils import create_token\n"
        "result = create_token(client.api_key, client.secret_key)",
    )
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "sign_type": "SIGN", "typ": "JWT"}
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["api_key"] == gateway.api_key
    assert claims["exp"] > 10**12  # milliseconds, as the SDK signs it
    body = {"model": ONLINE_MODEL, "query": "token", "mode": "invoke"}
    answer = httpx.post(
        f"{gateway.base_url}/aigc/chat/", json=body, headers={"Authorization": token}, timeout=30
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"] == "Echo: token"
    # and the server's own token for the pair is accepted alike
    issued = httpx.get(
        f"{gateway.base_url}/aigc/token",
        params={"api_key": gateway.api_key, "secret_key": gateway.secret_key},
    ).json()["token"]
    assert jwt.get_unverified_header(issued)["sign_type"] == "SIGN"
    again = httpx.post(
        f"{gateway.base_url}/aigc/chat/", json=body, headers={"Authorization": issued}, timeout=30
    )
    assert again.status_code == 200, again.text


@pytest.mark.parametrize(
    "keys",
    [{"secret_key": "not-the-secret"}, {"api_key": "ak-nobody", "secret_key": "whatever"}],
    ids=["wrong-secret", "unknown-key"],
)
def test_a_bad_key_pair_is_401_in_the_final_response(
    gateway: Gateway, keys: dict[str, str]
) -> None:
    gateway.openai.requests.clear()
    result = sdk(
        gateway,
        f"invoke = client.chat({ONLINE_MODEL!r}, query='你好')\n"
        f"stream = list(client.chat({ONLINE_MODEL!r}, query='你好', mode='stream'))\n"
        f"sent = client.chat({ONLINE_MODEL!r}, query='你好', mode='async')\n"
        "result = {'invoke': dump(invoke), 'stream': [dump(c) for c in stream],\n"
        "          'async': dump(sent)}",
        **keys,
    )
    assert result["invoke"]["status"] == 401
    assert result["invoke"]["data"] is None
    assert [chunk["status"] for chunk in result["stream"]] == [401]
    assert result["async"]["status"] == 401
    assert gateway.openai.requests == []  # nothing reached the model


# --------------------------------------------------------------------------- routing -----
def test_a_local_model_goes_to_local_chat_and_answers(gateway: Gateway) -> None:
    pytest.importorskip("llama_cpp")
    gateway.openai.requests.clear()
    mark = len(gateway.server.lines)
    result = sdk(
        gateway,
        f"result = dump(client.chat({LOCAL_MODEL!r}, query='Say hello.', max_tokens=8,"
        " do_sample=False))",
    )
    assert result["status"] == 200, result
    data = result["data"]
    assert data["model"] == LOCAL_MODEL
    assert data["choices"][0]["message"]["content"].strip()
    assert data["choices"][0]["finish_reason"] == "length"
    assert data["usage"]["completion_tokens"] == 8, "usage must count the 8 generated tokens"
    assert data["usage"]["cost"] == 0
    log = gateway.log_since(mark)
    assert '"POST /aigc/local_chat/ HTTP/1.1" 200' in log, log
    assert "/aigc/chat/" not in log
    assert gateway.openai.requests == []


# --------------------------------------------------------------------------- context -----
def test_upload_and_chat_with_the_files_text(gateway: Gateway, tmp_path: Path) -> None:
    contract = tmp_path / "合同.txt"
    contract.write_text("合同编号 HT-2024-0815：甲方于九月一日前交付全部货物。", encoding="utf-8")
    result = sdk(
        gateway,
        f"uploaded = client.upload_file([{str(contract)!r}])\n"
        f"answer = client.chat({ONLINE_MODEL!r}, query='交付日期是哪天？',\n"
        f"                     files={str(contract)!r})\n"
        "result = {'uploaded': uploaded, 'answer': dump(answer)}",
    )
    uploaded = result["uploaded"]
    assert uploaded["status"] == 200, uploaded
    assert len(uploaded["files"]) == 1
    assert re.fullmatch(r"file-[0-9a-f]{32}", uploaded["files"][0]), uploaded
    answer = result["answer"]
    assert answer["status"] == 200, answer
    content = answer["data"]["choices"][0]["message"]["content"]
    # the fake echoes the user message: the file's text came before the question
    assert "合同编号 HT-2024-0815" in content
    assert content.endswith("交付日期是哪天？")
    assert content.index("HT-2024-0815") < content.index("交付日期是哪天？")


def test_knowledge_chat_returns_the_hits(gateway: Gateway) -> None:
    moon = "嫦娥六号在哪里采样？"
    result = sdk(
        gateway,
        f"invoke = client.chat({ONLINE_MODEL!r}, query='青岛国际啤酒节在哪里开幕？',\n"
        f"                     knowledge={NEWS_STORE!r}, top_k=1)\n"
        f"strict = client.chat({ONLINE_MODEL!r}, query={moon!r}, knowledge={NEWS_STORE!r})\n"
        f"stream = list(client.chat({ONLINE_MODEL!r}, query={moon!r}, knowledge={NEWS_STORE!r},\n"
        "                          top_k=1, threshold=0, mode='stream'))\n"
        "result = {'invoke': dump(invoke), 'strict': dump(strict),\n"
        "          'stream': [dump(c) for c in stream]}",
    )
    invoke = result["invoke"]
    assert invoke["status"] == 200, invoke
    hits = invoke["data"]["knowledge"]
    assert [hit["title"] for hit in hits] == [NEWS[0]["title"]]
    assert hits[0]["url"] == NEWS[0]["url"]
    assert hits[0]["knowledge_base"] == NEWS_STORE
    assert 0 <= hits[0]["distance"] <= 500  # within the SDK's default threshold
    assert "金沙滩啤酒城" in invoke["data"]["choices"][0]["message"]["content"]
    # the SDK's default threshold (500) keeps only close hits; this question is too loose...
    assert result["strict"]["data"]["knowledge"] == []
    assert "没有检索到相关资料" in result["strict"]["data"]["choices"][0]["message"]["content"]
    # ...and threshold=0 turns the cut off: the hit comes back in every stream chunk
    stream = result["stream"]
    assert all(chunk["status"] == 200 for chunk in stream)
    for chunk in stream:
        assert [hit["title"] for hit in chunk["data"]["knowledge"]] == [NEWS[1]["title"]]
    assert stream[0]["data"]["knowledge"][0]["distance"] > 500
    assert "艾特肯盆地" in text_of(stream)


# --------------------------------------------------------------------------- sensitive ---
def test_a_sensitive_query_is_6601_or_masked(gateway: Gateway) -> None:
    gateway.openai.requests.clear()
    query = f"哪里能找到{SENSITIVE_WORD}？"
    result = sdk(
        gateway,
        f"refused = client.chat({ONLINE_MODEL!r}, query={query!r})\n"
        f"masked = client.chat({ONLINE_MODEL!r}, query={query!r}, sensitive_replace=True)\n"
        f"stream = list(client.chat({ONLINE_MODEL!r}, query={query!r}, mode='stream'))\n"
        "result = {'refused': dump(refused), 'masked': dump(masked),\n"
        "          'stream': [dump(c) for c in stream]}",
    )
    refused = result["refused"]
    assert refused["status"] == 6601
    assert refused["data"]["choices"] == []
    assert "敏感词" in refused["msg"]
    masked = result["masked"]
    assert masked["status"] == 200, masked
    assert masked["data"]["choices"][0]["message"]["content"] == "Echo: 哪里能找到****？"
    assert [chunk["status"] for chunk in result["stream"]] == [6601]
    # only the masked query reached the model; the refused ones never did
    assert len(gateway.openai.requests) == 1
    assert SENSITIVE_WORD not in json.dumps(gateway.openai.requests, ensure_ascii=False)


def test_a_sensitive_answer_is_stopped_in_the_stream_and_refused_whole(gateway: Gateway) -> None:
    story = (
        f"从前有座山，山里有座庙，庙里有个老和尚，每天给小和尚讲故事。他讲到一个{SENSITIVE_WORD}"
    )
    gateway.openai.reply = lambda _: f"{story}的故事，后来它被查封了。"
    result = sdk(
        gateway,
        f"stream = list(client.chat({ONLINE_MODEL!r}, query='讲个故事', mode='stream'))\n"
        f"invoke = client.chat({ONLINE_MODEL!r}, query='讲个故事')\n"
        f"masked = client.chat({ONLINE_MODEL!r}, query='讲个故事', sensitive_replace=True)\n"
        f"unchecked = client.chat({ONLINE_MODEL!r}, query='讲个故事', is_sensitive=False)\n"
        "result = {'stream': [dump(c) for c in stream], 'invoke': dump(invoke),\n"
        "          'masked': dump(masked), 'unchecked': dump(unchecked)}",
    )
    stream = result["stream"]
    statuses = [chunk["status"] for chunk in stream]
    assert statuses[-1] == 6601 and set(statuses[:-1]) == {200}, statuses
    released = text_of(stream[:-1])
    # the text before the word got out (less the window held back), nothing of the word did
    assert released and story.partition(SENSITIVE_WORD)[0].startswith(released)
    assert result["invoke"]["status"] == 6601
    masked = result["masked"]["data"]["choices"][0]["message"]["content"]
    assert masked == story.replace(SENSITIVE_WORD, "****") + "的故事，后来它被查封了。"
    unchecked = result["unchecked"]["data"]["choices"][0]["message"]["content"]
    assert SENSITIVE_WORD in unchecked
