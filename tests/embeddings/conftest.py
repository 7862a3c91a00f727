"""Fakes for the remote embedding servers, on loopback, each fresh for its test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fengchao_chains.testing.fakes.openai_embeddings import FakeOpenAIEmbeddings
from fengchao_chains.testing.fakes.tei import FakeTEI
from fengchao_chains.testing.serve import serve_in_thread

OPENAI_KEY = "sk-test"

PAIRS = [
    ("北京今天的天气怎么样？", "北京今日天气预报：晴，最高气温二十五度，微风。"),
    (
        "How do I reset my password?",
        "To reset your password, click 'Forgot password' on the sign-in page and follow the"
        " emailed link.",
    ),
    ("央行宣布降息", "中国人民银行决定下调贷款市场报价利率，以支持实体经济。"),
    ("苹果公司发布了新款手机", "Apple unveiled its newest iPhone at a launch event in California."),
    ("The football match ended in a draw.", "两支球队最终一比一战平，比赛以平局收场。"),
]
"""Queries and their paraphrases, in Chinese, English and across the two."""
DISTRACTORS = [
    "红烧肉的做法：五花肉切块，加冰糖和酱油慢炖。",
    "The stock market fell sharply on Monday after weak earnings.",
    "猫咪喜欢在窗台上晒太阳。",
    "Python 3.12 adds itertools.batched.",
]


@pytest.fixture
def tei() -> Iterator[tuple[FakeTEI, str]]:
    """A fake TEI serving multilingual-e5-small, and its URL."""
    fake = FakeTEI(encoder="e5")
    with serve_in_thread(fake.app) as url:
        yield fake, url


@pytest.fixture
def openai_embeddings() -> Iterator[tuple[FakeOpenAIEmbeddings, str]]:
    """A fake OpenAI embeddings API (e5 vectors), and its base URL (with ``/v1``)."""
    fake = FakeOpenAIEmbeddings(api_keys={OPENAI_KEY}, encoder="e5")
    with serve_in_thread(fake.app) as url:
        yield fake, f"{url}/v1"
