"""Knowledge-base question answering: retrieve, fill the 知识库 instruction, ask the model.

The 知识库 instruction takes the retrieved chunks as its ``documents`` variable (each with
``title``, ``source`` and ``content``) and lays them out, numbered, in its known-information
section; the model is told to cite them as 【资料N】.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import itemgetter
from typing import Any

from langchain_core.documents import Document
from langchain_core.language_models import BaseChatModel
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import Runnable, RunnableLambda, RunnablePassthrough

from fengchao_chains.prompts import PromptLibrary, get_prompt_library

KNOWLEDGE_PROMPT = "知识库"
_TITLE_KEYS = ("title", "file_name", "filename", "name")
_SOURCE_KEYS = ("source", "url", "file_path", "path")


def _first(metadata: dict[str, Any], keys: Sequence[str]) -> str | None:
    for key in keys:
        value = metadata.get(key)
        if value not in (None, ""):
            return str(value)
    return None


def document_chunks(documents: Sequence[Document]) -> list[dict[str, str | None]]:
    """Retrieved documents as the 知识库 prompt's ``documents``: title and source from the
    usual metadata keys (``title``/``file_name``, ``source``/``url``), else ``None``."""
    return [
        {
            "title": _first(doc.metadata, _TITLE_KEYS),
            "source": _first(doc.metadata, _SOURCE_KEYS),
            "content": doc.page_content,
        }
        for doc in documents
    ]


def knowledge_chain(
    retriever: BaseRetriever,
    model: BaseChatModel,
    *,
    library: PromptLibrary | None = None,
    prompt: str = KNOWLEDGE_PROMPT,
) -> Runnable[dict[str, Any], Any]:
    """``{"query": ...}`` (plus optional ``system``, ``history``) -> the model's answer,
    grounded in what ``retriever`` finds for the query."""
    template = (library or get_prompt_library()).chat_prompt_template(prompt)
    retrieve = itemgetter("query") | retriever | RunnableLambda(document_chunks)
    chain = RunnablePassthrough.assign(documents=retrieve) | template | model
    return chain.with_config(run_name="knowledge_chain")
