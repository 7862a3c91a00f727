"""The knowledge-base chain fills the 知识库 instruction with what the retriever found and
sends it to a real ChatModel (over HTTP, to the fake OpenAI server)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.vectorstores import InMemoryVectorStore

from fengchao_chains.chains import document_chunks, knowledge_chain
from fengchao_chains.llms.openai_compatible import ChatOpenAI
from fengchao_chains.prompts import get_prompt_library
from fengchao_chains.testing.fakes.openai import FakeOpenAI
from fengchao_chains.testing.serve import serve_in_thread

NEWS = [
    Document("故宫是明清两代的皇家宫殿。", metadata={"title": "故宫", "source": "news/1"}),
    Document("天坛是明清皇帝祭天的场所。", metadata={"title": "天坛", "source": "news/2"}),
    Document("钟鼓楼位于中轴线北端。", metadata={"file_name": "钟鼓楼.txt", "url": "http://x/3"}),
    Document("颐和园是皇家园林。", metadata={}),
]


@pytest.fixture(scope="module")
def fake_openai() -> Iterator[tuple[FakeOpenAI, str]]:
    fake = FakeOpenAI()
    with serve_in_thread(fake.app) as url:
        yield fake, url


def test_document_chunks_take_title_and_source_from_common_metadata_keys() -> None:
    assert document_chunks(NEWS[2:]) == [
        {"title": "钟鼓楼.txt", "source": "http://x/3", "content": "钟鼓楼位于中轴线北端。"},
        {"title": None, "source": None, "content": "颐和园是皇家园林。"},
    ]


async def test_chain_puts_the_retrieved_chunks_into_the_knowledge_prompt(
    fake_openai: tuple[FakeOpenAI, str],
) -> None:
    fake, url = fake_openai
    store = InMemoryVectorStore(DeterministicFakeEmbedding(size=32))
    store.add_documents(NEWS)
    retriever = store.as_retriever(search_kwargs={"k": 2})
    model = ChatOpenAI(model="gpt-3.5-turbo", api_key="sk-test", base_url=f"{url}/v1")
    chain = knowledge_chain(retriever, model)
    question = "北京中轴线上有什么？"

    answer = await chain.ainvoke({"query": question})

    found = retriever.invoke(question)
    assert len(found) == 2
    sent = fake.last_request["body"]["messages"]
    assert [m["role"] for m in sent] == ["system", "user"]
    assert sent[0]["content"] == get_prompt_library()["知识库"].system
    user = sent[1]["content"]
    for index, doc in enumerate(found, start=1):
        chunk = document_chunks([doc])[0]
        assert f"【资料{index}】{chunk['title'] or '（无标题）'}" in user
        assert doc.page_content in user
    assert user.rstrip().endswith(f"问题：{question}")
    assert answer.content == f"Echo: {user}"  # the fake echoes the last user message
    assert answer.usage_metadata is not None

    streamed = "".join(str(chunk.content) for chunk in chain.stream({"query": question}))
    assert streamed == answer.content
