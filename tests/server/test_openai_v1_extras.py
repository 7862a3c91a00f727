"""``/v1`` extras (knowledge base, instruction), ``/v1/models`` and ``/v1/embeddings`` over
the app, a fake OpenAI and a news store loaded with real embeddings."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from fengchao_chains.callbacks.token_estimate import estimate_tokens
from fengchao_chains.retrievers import NEWS_STORE
from tests.server.conftest import ONLINE, Server
from tests.server.test_openai_v1 import error_of, post, stream

EMBEDDER = "use-multilingual-v3"


def test_knowledge_grounds_the_question_and_returns_the_hits(news: Server) -> None:
    messages = [
        {"role": "system", "content": "只用中文回答。"},
        {"role": "user", "content": "你好"},
        {"role": "assistant", "content": "你好！"},
        {"role": "user", "content": "北京冬奥会在哪里开幕"},
    ]
    body = post(news, messages=messages, knowledge=NEWS_STORE, top_k=2, threshold=0).json()
    hits = body["knowledge"]
    assert len(hits) == 2 and hits[0]["title"] == "北京冬奥会开幕"
    assert 0 < hits[0]["similarity"] <= 1
    sent = news.openai.last_request["body"]["messages"]
    assert sent[0] == {"role": "system", "content": "只用中文回答。"}  # the client's system wins
    assert sent[1:3] == messages[1:3]  # the history stays
    assert "国家体育场" in sent[3]["content"] and "北京冬奥会在哪里开幕" in sent[3]["content"]
    assert "【资料1】" in sent[3]["content"]
    assert body["choices"][0]["message"]["content"].startswith("Echo: ")


def test_a_stream_carries_the_hits_on_its_first_chunk(news: Server) -> None:
    asked = [{"role": "user", "content": "长江降雨"}]
    events, _ = stream(news, messages=asked, knowledge=NEWS_STORE, top_k=1)
    assert events[0]["knowledge"][0]["title"] == "长江流域降雨"
    assert all("knowledge" not in e for e in events[1:])


def test_an_unknown_knowledge_base_is_404(server: Server) -> None:
    error = error_of(post(server, knowledge="no-such-kb"), 404)
    assert error["code"] == "knowledge_base_not_found" and error["param"] == "knowledge"
    assert not server.openai.requests


def test_an_instruction_renders_the_question(server: Server) -> None:
    asked = [{"role": "user", "content": "今天天气很好"}]
    body = post(server, messages=asked, prompt="中译英").json()
    assert "knowledge" not in body
    system, user = server.openai.last_request["body"]["messages"]
    assert system["role"] == "system" and "中译英" in system["content"]
    assert user["role"] == "user" and "今天天气很好" in user["content"]
    assert user["content"] != "今天天气很好"
    error = error_of(post(server, messages=asked, prompt="中译"), 400)
    assert error["param"] == "prompt" and "中译英" in error["message"]


def test_models_lists_chat_and_embedding_models(server: Server) -> None:
    listed = server.client.get("/v1/models", headers={"Authorization": server.token}).json()
    assert listed["object"] == "list"
    ids = [model["id"] for model in listed["data"]]
    assert ids[: len(server.runtime.catalog)] == list(server.runtime.catalog)
    assert EMBEDDER in ids and "multilingual-e5-small" in ids
    gpt = next(model for model in listed["data"] if model["id"] == ONLINE)
    assert gpt == {"id": ONLINE, "object": "model", "created": gpt["created"], "owned_by": "Openai"}
    one = server.client.get(f"/v1/models/{ONLINE}", headers={"Authorization": server.token})
    assert one.json() == gpt
    missing = server.client.get("/v1/models/nope", headers={"Authorization": server.token})
    assert error_of(missing, 404)["code"] == "model_not_found"


def embed(server: Server, **body: Any) -> Any:
    return server.client.post(
        "/v1/embeddings", json={"model": EMBEDDER} | body, headers={"Authorization": server.token}
    )


def test_embeddings_as_floats_and_base64(server: Server) -> None:
    texts = ["北京冬奥会开幕", "长江流域降雨"]
    floats = embed(server, input=texts).json()
    assert floats["object"] == "list" and floats["model"] == EMBEDDER
    assert [item["index"] for item in floats["data"]] == [0, 1]
    assert all(item["object"] == "embedding" for item in floats["data"])
    vectors = [item["embedding"] for item in floats["data"]]
    assert all(len(vector) == 512 for vector in vectors)
    estimate = sum(estimate_tokens(text) for text in texts)  # a local model reports none
    assert floats["usage"] == {"prompt_tokens": estimate, "total_tokens": estimate}
    packed = embed(server, input=texts, encoding_format="base64").json()
    decoded = [
        np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4") for item in packed["data"]
    ]
    assert np.allclose(decoded, vectors, atol=1e-6)
    single = embed(server, input="北京冬奥会开幕").json()
    assert np.allclose(single["data"][0]["embedding"], vectors[0], atol=1e-6)


def test_embedding_refusals(server: Server) -> None:
    assert error_of(embed(server, model=ONLINE, input="x"), 404)["code"] == "model_not_found"
    tokens = error_of(embed(server, input=[[1, 2, 3]]), 400)
    assert "check_embedding_ctx_length=False" in tokens["message"]
    assert error_of(embed(server, input=["a", ""]), 400)["param"] == "input"
    assert error_of(embed(server, input="a", dimensions=64), 400)["param"] == "dimensions"
    assert (
        error_of(embed(server, input="a", encoding_format="hex"), 400)["param"] == "encoding_format"
    )
    no_key = server.client.post("/v1/embeddings", json={"model": EMBEDDER, "input": "a"})
    assert error_of(no_key, 401)["code"] == "invalid_api_key"
