"""A small knowledge base with known answers, embedded with the fast packaged USE model."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from langchain_core.embeddings import Embeddings

from fengchao_chains.db import Database
from fengchao_chains.embeddings import get_embeddings
from fengchao_chains.retrievers import (
    ChunkRecord,
    ChunkStore,
    DocumentRecord,
    KnowledgeBase,
    KnowledgeBaseRegistry,
)

# (document id, title, content, metadata): one chunk each; every query in the tests has one
# right answer here.
NEWS: list[tuple[str, str, str, dict[str, Any]]] = [
    ("palace", "故宫博物院接待游客创新高", "故宫博物院今年接待游客超过一千七百万人次，"
     "午门和太和殿是最受欢迎的参观点。", {"source": "示例日报", "category": "文化",
     "published_at": "2024-03-02T09:00:00+08:00", "views": 1200}),
    ("subway", "北京地铁新线开通", "北京地铁十七号线北段开通运营，早高峰通勤时间缩短二十分钟，"
     "道路交通拥堵有所缓解。", {"source": "示例日报", "category": "交通",
     "published_at": "2024-01-15T08:00:00+08:00", "views": 800}),
    ("ev", "新能源汽车销量增长", "一月份新能源汽车销量同比增长百分之三十，电池价格下降是主要原因。",
     {"source": "财经周刊", "category": "汽车", "published_at": "2024-02-10T10:00:00+08:00",
      "views": 300}),
    ("marathon", "城市马拉松开跑", "三万名跑者参加了周日的城市马拉松，男子组冠军用时两小时八分。",
     {"source": "体育报", "category": "体育", "published_at": "2023-11-05T07:30:00+08:00",
      "views": 50}),
    ("phone", "型号X9527手机发布", "某公司发布型号X9527的折叠屏手机，起售价六千九百九十九元。",
     {"source": "科技周刊", "category": "科技", "published_at": "2024-04-01T12:00:00+08:00"}),
    ("rain", "Heavy rain expected in the south", "Forecasters expect heavy rain and flooding "
     "across southern provinces this weekend; residents are told to avoid rivers.",
     {"source": "Example Wire", "category": "环境", "published_at": "2024-06-20T18:00:00+08:00",
      "views": 2000}),
    ("vaccine", "New flu vaccine approved", "Regulators approved a new seasonal flu vaccine "
     "for adults over sixty-five, with doses shipping to clinics next month.",
     {"source": "Example Wire", "category": "健康", "published_at": "2023-09-12T11:00:00+08:00",
      "views": 150}),
    ("school", "中小学课后服务全覆盖", "教育部门表示，全市中小学已实现课后服务全覆盖，"
     "学生可以在校完成作业并参加兴趣小组。", {"source": "示例日报", "category": "教育",
     "published_at": "2024-05-08T09:30:00+08:00", "views": 640}),
]  # fmt: skip


def write_news(
    store: ChunkStore,
    embeddings: Embeddings,
    news: Sequence[tuple[str, str, str, dict[str, Any]]],
) -> None:
    texts = [f"{title}\n{content}" for _, title, content, _ in news]
    vectors = embeddings.embed_documents(texts)
    records = []
    for (doc_id, title, content, extra), text, vector in zip(news, texts, vectors, strict=True):
        metadata = {"title": title, **extra}
        digest = hashlib.sha256(text.encode()).hexdigest()
        chunk = ChunkRecord(0, content, metadata, digest, vector)
        records.append(DocumentRecord(doc_id, digest, metadata, [chunk]))
    store.write(records)


@pytest.fixture(scope="session")
def use_embeddings() -> Embeddings:
    return get_embeddings("use-multilingual-v3")


@pytest.fixture
def registry(database: Database) -> KnowledgeBaseRegistry:
    return KnowledgeBaseRegistry(database)


@pytest.fixture
def make_kb(
    database: Database, registry: KnowledgeBaseRegistry, use_embeddings: Embeddings
) -> Callable[..., KnowledgeBase]:
    def make(kb_id: str = "news", news: Sequence[Any] = NEWS) -> KnowledgeBase:
        kb = registry.create(kb_id, embedding_model="use-multilingual-v3", dims=512)
        write_news(ChunkStore(database, kb), use_embeddings, news)
        return kb

    return make


@pytest.fixture
def news_kb(make_kb: Callable[..., KnowledgeBase]) -> KnowledgeBase:
    return make_kb()
