"""``/v1/embeddings`` is metered like every model call: one ``usage_events`` row per call,
with the upstream's own token counts (a fake OpenAI-compatible embeddings server on
loopback, asked in batches) or, from a local model, the estimator's, marked as such; the
card's price; failures counting what the upstream had answered; and the key's limits
admitting on the input's estimate and settling to the recorded figure."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fengchao_chains.callbacks.token_estimate import estimate_tokens
from fengchao_chains.settings import Settings
from fengchao_chains.testing.fakes._common import count_tokens
from fengchao_chains.testing.fakes.openai_embeddings import FakeOpenAIEmbeddings
from fengchao_chains.testing.serve import serve_in_thread
from tests.server.conftest import Server

REMOTE = "fake-use"
LOCAL = "use-multilingual-v3"
PRICE = 0.5  # USD per 1,000 input tokens
PREFIX = "passage: "
TEXTS = ["北京冬奥会开幕式在国家体育场举行", "长江流域迎来新一轮强降雨", "the quick brown fox"]
KEY_ENV = "FAKE_EMBEDDINGS_KEY"
"""The variable the card reads the fake's key (``sk-test``) from."""
CARD = """
[embeddings."{model}"]
vendor = "openai_compatible"
vendor_model = "use"
dims = 512
base_url = "{url}/v1"
api_key_env = "{key_env}"
batch_size = 2
document_prefix = "{prefix}"
in_price = {price}
unit = "USD"
"""


def embeddings_catalog(path: Path, model: str, url: str, *, prefix: str = "") -> Path:
    """A catalog file with one embedding model ``model`` served by the fake at ``url``, asked
    in batches of 2, priced at :data:`PRICE` USD per 1,000 input tokens."""
    path.write_text(
        CARD.format(model=model, url=url, prefix=prefix, price=PRICE, key_env=KEY_ENV), "utf-8"
    )
    return path


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[FakeOpenAIEmbeddings, str]]:
    fake = FakeOpenAIEmbeddings(encoder="use")
    with serve_in_thread(fake.app) as url:
        yield fake, url


@pytest.fixture
def fake(upstream: tuple[FakeOpenAIEmbeddings, str]) -> Iterator[FakeOpenAIEmbeddings]:
    vendor = upstream[0]
    vendor.requests.clear()
    yield vendor
    vendor.context_window = FakeOpenAIEmbeddings.context_window


@pytest.fixture
def settings(
    settings: Settings,
    upstream: tuple[FakeOpenAIEmbeddings, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Settings:
    """A catalog with the fake's model; no caching of the limits table."""
    catalog = embeddings_catalog(tmp_path / "embeddings.toml", REMOTE, upstream[1], prefix=PREFIX)
    monkeypatch.setenv(KEY_ENV, "sk-test")
    return settings.model_copy(update={"catalog_files": [catalog], "limits_cache_seconds": 0})


def embed(server: Server, model: str = REMOTE, **body: Any) -> Any:
    body = {"model": model, "input": TEXTS} | body
    return server.client.post("/v1/embeddings", json=body, headers=server.headers())


def rows(server: Server) -> list[tuple[Any, ...]]:
    server.runtime.usage.flush()
    with server.runtime.database.pool.connection() as conn:
        return conn.execute(
            "SELECT model, front_door, status, streamed, prompt_tokens, completion_tokens,"
            " estimated, cost::float, unit, error FROM usage_events ORDER BY id"
        ).fetchall()


def upstream_counts(fake: FakeOpenAIEmbeddings) -> list[int]:
    """The fake's own token count of each request it received (what it reported)."""
    return [sum(count_tokens(text) for text in sent["body"]["input"]) for sent in fake.requests]


def ok_row(tokens: int) -> tuple[Any, ...]:
    """A finished call's row: the upstream's count, not estimated, at the card's price."""
    cost = pytest.approx(tokens * PRICE / 1000)
    return (REMOTE, "v1", "ok", False, tokens, 0, False, cost, "USD", None)


def api_key(server: Server) -> str:
    return next(info.api_key for info in server.runtime.keys.list() if info.name == "first")


def test_each_call_is_one_row_with_the_upstreams_own_counts(
    server: Server, fake: FakeOpenAIEmbeddings
) -> None:
    documents = embed(server)
    assert documents.status_code == 200, documents.text
    queries = embed(server, input=TEXTS[:2], input_type="query", encoding_format="base64")
    assert queries.status_code == 200, queries.text

    counts = upstream_counts(fake)
    assert len(counts) == 4  # documents in two batches of 2 and 1, then one per query
    assert fake.requests[0]["body"]["input"][0] == PREFIX + TEXTS[0]  # what it counted
    first, second = sum(counts[:2]), sum(counts[2:])
    assert first != sum(estimate_tokens(text) for text in TEXTS)  # not the estimate
    assert documents.json()["usage"] == {"prompt_tokens": first, "total_tokens": first}
    assert queries.json()["usage"] == {"prompt_tokens": second, "total_tokens": second}
    assert rows(server) == [ok_row(first), ok_row(second)]


def test_a_local_model_reports_none_so_the_row_is_the_marked_estimate(server: Server) -> None:
    answer = embed(server, LOCAL)
    assert answer.status_code == 200, answer.text
    estimate = sum(estimate_tokens(text) for text in TEXTS)
    assert answer.json()["usage"]["prompt_tokens"] == estimate
    assert rows(server) == [(LOCAL, "v1", "ok", False, estimate, 0, True, 0.0, "CNY", None)]


def test_a_call_failing_midway_counts_the_batches_answered_before(
    server: Server, fake: FakeOpenAIEmbeddings
) -> None:
    fake.context_window = 30
    long_text = "很长的一段文字" * 10  # over the window: the second batch is refused
    failed = embed(server, input=[*TEXTS[:2], long_text])
    assert failed.status_code == 400, failed.text
    assert failed.json()["error"]["code"] == "context_length_exceeded"
    counts = upstream_counts(fake)
    assert len(counts) == 2
    assert rows(server) == [
        (REMOTE, "v1", "error", False, counts[0], 0, False,
         pytest.approx(counts[0] * PRICE / 1000), "USD", "ContextTooLongError"),
    ]  # fmt: skip


def test_refusals_before_the_call_are_not_rows(server: Server, fake: FakeOpenAIEmbeddings) -> None:
    assert embed(server, input=["a", ""]).status_code == 400
    assert embed(server, dimensions=64).status_code == 400
    assert embed(server, "gpt-3.5-turbo").status_code == 404
    assert fake.requests == [] and rows(server) == []


@pytest.mark.usefixtures("same_minute")
def test_limits_admit_on_the_estimate_and_settle_to_the_upstreams_count(
    server: Server, fake: FakeOpenAIEmbeddings
) -> None:
    limits = server.runtime.limits
    limits.set(api_key(server), rpm=1, tpm=100_000)
    answer = embed(server)
    assert answer.status_code == 200, answer.text
    billed = sum(upstream_counts(fake))
    assert limits.status(api_key(server)).tokens == billed == answer.json()["usage"]["total_tokens"]

    refused = embed(server)
    assert refused.status_code == 429 and 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.json()["error"] == {
        "message": refused.json()["error"]["message"],
        "type": "requests",
        "param": None,
        "code": "rate_limit_exceeded",
    }
    assert "per minute" in refused.json()["error"]["message"]
    assert len(fake.requests) == 2  # the refused request never reached the upstream
    assert len(rows(server)) == 1


def test_an_input_over_the_whole_tpm_is_refused_without_retry(
    server: Server, fake: FakeOpenAIEmbeddings
) -> None:
    server.runtime.limits.set(api_key(server), tpm=5)
    refused = embed(server)
    assert refused.status_code == 429
    assert refused.headers["x-should-retry"] == "false"
    assert refused.json()["error"]["type"] == "tokens"
    assert fake.requests == [] and rows(server) == []
