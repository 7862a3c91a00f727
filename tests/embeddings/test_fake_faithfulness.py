"""The fakes speak the real protocols: the official openai SDK (in its own venv) against the
fake OpenAI embeddings API, and huggingface_hub's InferenceClient against the fake TEI."""

from __future__ import annotations

import numpy as np
import pytest
from huggingface_hub import AsyncInferenceClient, InferenceClient
from huggingface_hub.errors import HfHubHTTPError

from fengchao_chains.embeddings.e5 import E5Embeddings
from fengchao_chains.testing.fakes._common import Fault
from fengchao_chains.testing.fakes.openai_embeddings import FakeOpenAIEmbeddings
from fengchao_chains.testing.fakes.tei import FakeTEI
from tests.embeddings.conftest import OPENAI_KEY
from tests.vendor_sdks import run_vendor_sdk

CLIENT = """
import openai
from openai import OpenAI
client = OpenAI(base_url={url!r}, api_key={key!r}, max_retries=0)
"""


@pytest.mark.timeout(900)
def test_openai_sdk_against_the_fake(
    openai_embeddings: tuple[FakeOpenAIEmbeddings, str],
) -> None:
    fake, url = openai_embeddings
    fake.inject(Fault.RATE_LIMITED, retry_after=1)
    result = run_vendor_sdk(
        "openai",
        CLIENT.format(url=url, key=OPENAI_KEY)
        + """
try:
    client.embeddings.create(model="text-embedding-3-small", input="hi")
    limited = None
except openai.RateLimitError as exc:
    limited = [exc.status_code, exc.response.headers.get("retry-after")]
default = client.embeddings.create(model="text-embedding-3-small", input=["你好", "hello"])
short = client.embeddings.create(model="text-embedding-3-small", input="hello",
    encoding_format="float", dimensions=64)
bad = OpenAI(base_url=str(client.base_url), api_key="sk-wrong", max_retries=0)
try:
    bad.embeddings.create(model="text-embedding-3-small", input="hi")
    denied = None
except openai.AuthenticationError as exc:
    denied = [exc.status_code, exc.code]
result = {
    "vectors": [d.embedding for d in default.data],
    "indexes": [d.index for d in default.data],
    "usage": default.usage.model_dump(),
    "model": default.model,
    "short": len(short.data[0].embedding),
    "limited": limited,
    "denied": denied,
}
""",
    )
    assert fake.requests[1]["body"]["encoding_format"] == "base64"  # the SDK's default
    expected = E5Embeddings().embed_documents(["你好", "hello"])
    assert np.allclose(result["vectors"], expected, atol=1e-6)
    assert result["indexes"] == [0, 1]
    assert result["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    assert result["model"] == "text-embedding-3-small"
    assert result["short"] == 64
    assert result["limited"] == [429, "1"]
    assert result["denied"] == [401, "invalid_api_key"]


def test_huggingface_hub_against_the_fake_tei(tei: tuple[FakeTEI, str]) -> None:
    fake, url = tei
    client = InferenceClient(base_url=url, provider="hf-inference")
    vectors = client.feature_extraction(["passage: 你好", "query: hello"], normalize=True)
    assert vectors.shape == (2, 384)
    e5 = E5Embeddings()
    assert np.allclose(vectors[0], e5.embed_documents(["你好"])[0], atol=1e-5)
    assert np.allclose(vectors[1], e5.embed_query("hello"), atol=1e-5)
    assert client.feature_extraction("passage: 你好").shape == (1, 384)  # a string: one row
    info = client.get_endpoint_info()
    assert info["model_id"] == "intfloat/multilingual-e5-small"
    assert info["max_client_batch_size"] == 32
    assert client.health_check() is True
    fake.healthy = False
    assert client.health_check() is False
    fake.inject(Fault.RATE_LIMITED)
    with pytest.raises(HfHubHTTPError) as info_429:
        client.feature_extraction(["x"])
    assert info_429.value.response.status_code == 429
    assert info_429.value.response.json() == {
        "error": "Model is overloaded",
        "error_type": "Overloaded",
    }


async def test_async_huggingface_hub_against_the_fake_tei(tei: tuple[FakeTEI, str]) -> None:
    _, url = tei
    async with AsyncInferenceClient(base_url=url, provider="hf-inference") as client:
        vectors = await client.feature_extraction(["passage: 北京"], normalize=True, truncate=True)
    assert np.allclose(vectors[0], E5Embeddings().embed_documents(["北京"])[0], atol=1e-5)
