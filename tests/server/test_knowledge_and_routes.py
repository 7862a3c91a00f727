"""Knowledge-base chat through /aigc and LangServe, and the LangServe routes' auth, identity
and schemas, on a news store loaded with real embeddings."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fengchao_chains.retrievers import NEWS_STORE
from tests.server.conftest import Server


def test_aigc_knowledge_chat_returns_hits_and_grounds_the_prompt(news: Server) -> None:
    answer = news.chat(query="北京冬奥会在哪里开幕", knowledge=NEWS_STORE, top_k=2, threshold=0)
    body = answer.json()
    assert answer.status_code == 200 and body["status"] == 200
    hits = body["knowledge"]
    assert len(hits) == 2
    assert hits[0]["title"] == "北京冬奥会开幕"
    assert 0 < hits[0]["similarity"] <= 1
    assert hits[0]["distance"] == pytest.approx((1 - hits[0]["similarity"]) * 1000, abs=0.01)
    prompt = news.last_messages()[-1]["content"]
    assert "国家体育场" in prompt and "北京冬奥会在哪里开幕" in prompt  # the 知识库 instruction
    assert "【资料1】" in prompt


def test_threshold_is_cosine_distance_times_1000(news: Server) -> None:
    loose = news.chat(query="北京冬奥会", knowledge=NEWS_STORE, top_k=3, threshold=0).json()
    distances = [hit["distance"] for hit in loose["knowledge"]]
    cut = (distances[0] + distances[-1]) / 2
    strict = news.chat(query="北京冬奥会", knowledge=NEWS_STORE, top_k=3, threshold=cut).json()
    assert [h["distance"] for h in strict["knowledge"]] == [d for d in distances if d <= cut]
    assert 0 < len(strict["knowledge"]) < len(distances)


def test_stream_carries_the_hits_in_every_chunk(news: Server) -> None:
    chunks = news.stream(query="长江降雨", knowledge=NEWS_STORE, top_k=1, threshold=0)
    assert all(chunk["knowledge"][0]["title"] == "长江流域降雨" for chunk in chunks)


def invoke(server: Server, path: str, payload: dict[str, Any], **headers: str) -> Any:
    return server.client.post(
        f"{path}/invoke",
        json={"input": payload, "config": {}, "kwargs": {}},
        headers=headers or server.headers(),
    )


def test_langserve_knowledge_route_returns_answer_and_documents(news: Server) -> None:
    payload = {"query": "新能源汽车", "top_k": 1, "threshold": 0, "model": "gpt-3.5-turbo"}
    response = invoke(news, "/knowledge", payload)
    assert response.status_code == 200, response.text
    output = response.json()["output"]
    assert output["documents"][0]["metadata"]["title"] == "新能源汽车销量"
    assert output["answer"]["content"].startswith("Echo: ")


def test_langserve_routes_need_a_caller(server: Server) -> None:
    for path in ("/chat", "/knowledge", "/instruct"):
        refused = server.client.post(f"{path}/invoke", json={"input": {"query": "hi"}})
        assert refused.status_code == 401
        assert server.client.get(f"{path}/input_schema").status_code == 401
    page = server.client.get(
        "/chat/playground/", headers={"accept": "text/html"}, follow_redirects=False
    )
    assert page.status_code == 303 and page.headers["location"].startswith("/login?next=")


def test_langserve_chat_picks_the_model_per_request(server: Server) -> None:
    response = invoke(server, "/chat", {"query": "你好", "model": "gpt-3.5-turbo"})
    assert response.status_code == 200, response.text
    assert response.json()["output"]["content"] == f"Echo: {server.last_messages()[-1]['content']}"


def test_langserve_instruct_applies_a_library_instruction(server: Server) -> None:
    payload = {"prompt": "中译英", "query": "今天天气很好", "model": "gpt-3.5-turbo"}
    response = invoke(server, "/instruct", payload)
    assert response.status_code == 200, response.text
    assert server.last_messages()[0]["content"] == server.runtime.prompts["中译英"].system


def test_a_client_cannot_choose_its_caller_through_config(server: Server) -> None:
    """Conversations are per caller: a config claiming another caller is overridden."""
    payload = {"query": "我叫小红", "model": "gpt-3.5-turbo", "request_id": "shared"}
    server.chat(token=server.other_token, query="秘密", request_id="shared")
    # the second key's conversation
    other = next(k.api_key for k in server.runtime.keys.list() if k.name == "second")
    forged = {"configurable": {"fengchao_caller": other}}
    response = server.client.post(
        "/chat/invoke",
        json={"input": payload, "config": forged, "kwargs": {}},
        headers=server.headers(),
    )
    assert response.status_code == 200, response.text
    sent = json.dumps(server.last_messages(), ensure_ascii=False)
    assert "我叫小红" in sent and "秘密" not in sent


def test_langserve_stream_and_batch(server: Server) -> None:
    with server.client.stream(
        "POST",
        "/chat/stream",
        json={"input": {"query": "流式", "model": "gpt-3.5-turbo"}, "config": {}},
        headers=server.headers(),
    ) as response:
        assert response.status_code == 200
        raw = "".join(response.iter_text())
    assert "event: data" in raw and "event: end" in raw
    batch = server.client.post(
        "/chat/batch",
        json={
            "inputs": [{"query": q, "model": "gpt-3.5-turbo"} for q in ("一", "二")],
            "config": {},
        },
        headers=server.headers(),
    )
    assert batch.status_code == 200
    outputs = batch.json()["output"]
    assert all(o["content"].endswith(q) for o, q in zip(outputs, ["一", "二"], strict=True))
