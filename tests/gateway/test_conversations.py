"""Conversation memory in PostgreSQL: LangChain's chat-message-history interface, sync and
async, per-owner isolation, the max_messages window, atomic turns and concurrent writers."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

import pytest
from langchain_core.language_models import FakeListChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.prompt_values import PromptValue
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables import ConfigurableFieldSpec, RunnableLambda
from langchain_core.runnables.history import RunnableWithMessageHistory

from fengchao_chains.db import Database
from fengchao_chains.gateway.conversations import (
    ConversationIdError,
    ConversationStore,
    MessageNotStorableError,
    PostgresChatMessageHistory,
)
from fengchao_chains.settings import Settings


def turn(question: str, answer: str) -> list[BaseMessage]:
    return [HumanMessage(question), AIMessage(answer)]


def texts(messages: Sequence[BaseMessage]) -> list[tuple[str, Any]]:
    return [(m.type, m.content) for m in messages]


def stored_rows(database: Database) -> tuple[int, int]:
    """(conversations, messages) in the table, whoever owns them."""
    with database.pool.connection() as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM conversations),"
            " (SELECT count(*) FROM conversation_messages)"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


# ---------------------------------------------------------------------- round trips -------
def test_turns_round_trip_and_persist(database: Database) -> None:
    history = PostgresChatMessageHistory(database, "key-a", "req-1")
    assert history.messages == []
    history.add_messages(turn("北京今天天气怎么样？", "晴，25度。"))
    history.add_messages(
        [
            HumanMessage("再说一遍", additional_kwargs={"files": ["a.txt"]}),
            AIMessage("晴。", response_metadata={"model": "glm-4"}, id="run-1"),
        ]
    )
    again = PostgresChatMessageHistory(database, "key-a", "req-1").messages
    assert texts(again) == [
        ("human", "北京今天天气怎么样？"),
        ("ai", "晴，25度。"),
        ("human", "再说一遍"),
        ("ai", "晴。"),
    ]
    assert isinstance(again[2], HumanMessage) and isinstance(again[3], AIMessage)
    assert again[2].additional_kwargs == {"files": ["a.txt"]}
    assert again[3].response_metadata == {"model": "glm-4"} and again[3].id == "run-1"
    assert again == history.get_messages()


async def test_async_round_trip_matches_sync(database: Database) -> None:
    try:
        history = PostgresChatMessageHistory(database, "key-a", "req-async")
        await history.aadd_messages(turn("第一问", "第一答"))
        history.add_messages(turn("第二问", "第二答"))
        assert texts(await history.aget_messages()) == [
            ("human", "第一问"),
            ("ai", "第一答"),
            ("human", "第二问"),
            ("ai", "第二答"),
        ]
        assert await history.aget_messages() == history.messages
        await history.aclear()
        assert await history.aget_messages() == []
        assert stored_rows(database) == (0, 0)
    finally:
        await database.close_async_pool()


def test_clear_deletes_one_conversation(database: Database) -> None:
    first = PostgresChatMessageHistory(database, "key-a", "one")
    second = PostgresChatMessageHistory(database, "key-a", "two")
    first.add_messages(turn("q1", "a1"))
    second.add_messages(turn("q2", "a2"))
    first.clear()
    assert first.messages == []
    assert texts(second.messages) == [("human", "q2"), ("ai", "a2")]
    assert stored_rows(database) == (1, 2)
    first.add_messages(turn("q3", "a3"))  # a cleared conversation starts again
    assert texts(first.messages) == [("human", "q3"), ("ai", "a3")]


# ---------------------------------------------------------------------- ownership ---------
def test_same_request_id_under_two_keys_is_two_conversations(database: Database) -> None:
    mine = PostgresChatMessageHistory(database, "key-a", "shared-id")
    theirs = PostgresChatMessageHistory(database, "key-b", "shared-id")
    mine.add_messages(turn("我的问题", "我的回答"))
    assert theirs.messages == []
    theirs.add_messages(turn("their question", "their answer"))
    assert texts(mine.messages) == [("human", "我的问题"), ("ai", "我的回答")]
    theirs.clear()
    assert texts(mine.messages) == [("human", "我的问题"), ("ai", "我的回答")]
    assert theirs.messages == []


@pytest.mark.parametrize(
    "bad",
    ["", "x" * 129, "line\nbreak", "tab\there", "nul\x00", 42, None],
)
def test_bad_conversation_ids_are_refused(database: Database, bad: Any) -> None:
    with pytest.raises(ConversationIdError, match=r"conversation id \(request_id\)"):
        PostgresChatMessageHistory(database, "key-a", bad)
    with pytest.raises(ValueError, match="request_id"):  # a ValueError too
        ConversationStore(database, Settings()).history("key-a", bad)


def test_longest_and_unicode_conversation_ids_work(database: Database) -> None:
    for conversation_id in ("x" * 128, "会话-2024/05 #1", "a"):
        history = PostgresChatMessageHistory(database, "key-a", conversation_id)
        history.add_messages(turn("q", conversation_id))
        assert history.messages[1].content == conversation_id


@pytest.mark.parametrize("bad", ["", "k" * 257, "key\n"])
def test_bad_owners_are_refused(database: Database, bad: str) -> None:
    with pytest.raises(ConversationIdError, match="owner"):
        PostgresChatMessageHistory(database, bad, "req")


# ---------------------------------------------------------------------- the window --------
def test_window_returns_newest_messages_from_a_human_message(database: Database) -> None:
    writer = PostgresChatMessageHistory(database, "key-a", "long")
    for n in range(1, 4):
        writer.add_messages(turn(f"q{n}", f"a{n}"))
    writer.add_messages(
        [HumanMessage("q4"), AIMessage("tool call"), AIMessage("tool result"), AIMessage("a4")]
    )

    def window(n: int | None) -> list[tuple[str, Any]]:
        return texts(PostgresChatMessageHistory(database, "key-a", "long", max_messages=n).messages)

    assert len(window(None)) == 10
    assert window(10) == window(None)
    assert window(6) == [
        ("human", "q3"),
        ("ai", "a3"),
        ("human", "q4"),
        ("ai", "tool call"),
        ("ai", "tool result"),
        ("ai", "a4"),
    ]
    # 5 newest would start at a3: the half turn is dropped, not replayed without its question
    assert (
        window(5)
        == window(4)
        == [
            ("human", "q4"),
            ("ai", "tool call"),
            ("ai", "tool result"),
            ("ai", "a4"),
        ]
    )
    assert window(3) == []  # the newest turn alone is longer than the window
    assert window(0) == []


async def test_async_window_matches_sync(database: Database) -> None:
    try:
        writer = PostgresChatMessageHistory(database, "key-a", "w")
        for n in range(5):
            await writer.aadd_messages(turn(f"q{n}", f"a{n}"))
        for size in (None, 1, 2, 3, 4, 7):
            history = PostgresChatMessageHistory(database, "key-a", "w", max_messages=size)
            assert await history.aget_messages() == history.messages
        windowed = PostgresChatMessageHistory(database, "key-a", "w", max_messages=3)
        assert texts(await windowed.aget_messages()) == [("human", "q4"), ("ai", "a4")]
    finally:
        await database.close_async_pool()


def test_max_messages_zero_turns_memory_off(database: Database, settings: Settings) -> None:
    store = ConversationStore(
        database, settings.model_copy(update={"conversation_max_messages": 0})
    )
    assert not store.enabled
    off = store.history("key-a", "req")
    off.add_messages(turn("q", "a"))
    assert off.messages == []
    assert stored_rows(database) == (0, 0)
    with pytest.raises(ValueError, match="max_messages"):
        PostgresChatMessageHistory(database, "key-a", "req", max_messages=-1)


def test_store_uses_the_configured_window(database: Database, settings: Settings) -> None:
    store = ConversationStore(
        database, settings.model_copy(update={"conversation_max_messages": 2})
    )
    history = store.history("key-a", "req")
    assert history.max_messages == 2 and store.enabled
    for n in range(3):
        history.add_messages(turn(f"q{n}", f"a{n}"))
    assert texts(history.messages) == [("human", "q2"), ("ai", "a2")]
    default = ConversationStore(database, settings).history("key-a", "req")
    assert default.max_messages == 40 and len(default.messages) == 6


# ---------------------------------------------------------------------- atomic turns ------
def test_turn_failing_in_the_database_writes_nothing(database: Database) -> None:
    history = PostgresChatMessageHistory(database, "key-a", "atomic")
    # PostgreSQL's jsonb refuses \u0000: the second row fails after the first was inserted
    with pytest.raises(MessageNotStorableError, match="turn was not written") as caught:
        history.add_messages([HumanMessage("问题"), AIMessage("bad \x00 answer")])
    assert isinstance(caught.value, ValueError)
    assert history.messages == []
    assert stored_rows(database) == (0, 0)  # not even the conversation row
    history.add_messages(turn("q", "a"))
    with database.pool.connection() as conn:
        first_id = conn.execute("SELECT min(id) FROM conversation_messages").fetchone()
    assert first_id is not None and first_id[0] > 1, "the failed turn's first row was inserted"
    assert texts(history.messages) == [("human", "q"), ("ai", "a")]


def test_unserialisable_message_rolls_back_its_turn(database: Database) -> None:
    history = PostgresChatMessageHistory(database, "key-a", "atomic")
    history.add_messages(turn("before", "kept"))
    broken = AIMessage("answer", additional_kwargs={"handle": object()})
    with pytest.raises(MessageNotStorableError, match="cannot be stored"):
        history.add_messages([HumanMessage("next"), broken])
    assert texts(history.messages) == [("human", "before"), ("ai", "kept")]
    assert stored_rows(database) == (1, 2)


async def test_async_turn_failure_writes_nothing(database: Database) -> None:
    try:
        history = PostgresChatMessageHistory(database, "key-a", "atomic-async")
        circular: dict[str, Any] = {}
        circular["self"] = circular
        for bad in (
            AIMessage("nul \x00"),  # refused by jsonb
            AIMessage("x", additional_kwargs={"score": float("nan")}),  # refused by jsonb
            AIMessage("x", additional_kwargs={"o": {1, 2}}),  # json.dumps: TypeError
            AIMessage("x", additional_kwargs=circular),  # json.dumps: ValueError
        ):
            with pytest.raises(MessageNotStorableError):
                await history.aadd_messages([HumanMessage("q"), bad])
        assert await history.aget_messages() == []
        assert stored_rows(database) == (0, 0)
    finally:
        await database.close_async_pool()


def test_non_messages_are_refused_before_writing(database: Database) -> None:
    history = PostgresChatMessageHistory(database, "key-a", "req")
    with pytest.raises(MessageNotStorableError, match="not str"):
        history.add_messages([HumanMessage("q"), "plain text"])  # type: ignore[list-item]
    assert stored_rows(database) == (0, 0)


# ---------------------------------------------------------------------- concurrency -------
WRITERS, TURNS = ("w1", "w2", "w3"), 20


def check_concurrent_result(messages: list[BaseMessage]) -> None:
    """Every turn whole and in place (question, then its three answers), each writer's turns
    in the order it wrote them, nothing lost."""
    assert len(messages) == len(WRITERS) * TURNS * 4
    seen: dict[str, list[int]] = {w: [] for w in WRITERS}
    for start in range(0, len(messages), 4):
        question, *answers = messages[start : start + 4]
        assert isinstance(question, HumanMessage), texts(messages[start : start + 4])
        writer, number = str(question.content).split(":")
        assert [a.content for a in answers] == [f"{question.content}:{k}" for k in range(3)]
        seen[writer].append(int(number))
    assert seen == {w: list(range(TURNS)) for w in WRITERS}


def concurrent_turn(writer: str, number: int) -> list[BaseMessage]:
    question = f"{writer}:{number}"
    return [HumanMessage(question), *(AIMessage(f"{question}:{k}") for k in range(3))]


def test_concurrent_writers_keep_turns_whole_and_ordered(database: Database) -> None:
    start = threading.Barrier(len(WRITERS))
    errors: list[BaseException] = []

    def write(writer: str) -> None:
        history = PostgresChatMessageHistory(database, "key-a", "busy")
        start.wait()
        try:
            for number in range(TURNS):
                history.add_messages(concurrent_turn(writer, number))
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in WRITERS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    check_concurrent_result(PostgresChatMessageHistory(database, "key-a", "busy").messages)


async def test_concurrent_async_writers_keep_turns_whole_and_ordered(database: Database) -> None:
    try:

        async def write(writer: str) -> None:
            history = PostgresChatMessageHistory(database, "key-a", "busy")
            for number in range(TURNS):
                await history.aadd_messages(concurrent_turn(writer, number))

        await asyncio.gather(*(write(w) for w in WRITERS))
        reader = PostgresChatMessageHistory(database, "key-a", "busy")
        check_concurrent_result(await reader.aget_messages())
    finally:
        await database.close_async_pool()


# ---------------------------------------------------------------------- housekeeping ------
async def test_delete_older_than_removes_idle_conversations(database: Database) -> None:
    try:
        store = ConversationStore(database, Settings())
        idle, active = store.history("key-a", "idle"), store.history("key-a", "active")
        idle.add_messages(turn("old", "old"))
        active.add_messages(turn("new", "new"))
        with database.pool.connection() as conn:
            conn.execute(
                "UPDATE conversations SET updated_at = now() - interval '2 hours'"
                " WHERE conversation_id = 'idle'"
            )
        assert await store.adelete_older_than(3 * 3600) == 0
        assert await store.adelete_older_than(3600) == 1
        assert idle.messages == []
        assert texts(active.messages) == [("human", "new"), ("ai", "new")]
        assert stored_rows(database) == (1, 2)  # the idle conversation's messages went too
        with pytest.raises(ValueError, match="seconds"):
            await store.adelete_older_than(-1)
    finally:
        await database.close_async_pool()


# ---------------------------------------------------------------------- in a chain --------
class RecordingChain:
    """A real chain (prompt | recorder | FakeListChatModel) wrapped in LangChain's
    RunnableWithMessageHistory over the store; ``seen`` holds every prompt the model got."""

    def __init__(self, store: ConversationStore, answers: list[str]) -> None:
        self.seen: list[list[BaseMessage]] = []
        prompt = ChatPromptTemplate.from_messages(
            [
                ("system", "你是一个助手。"),
                MessagesPlaceholder("history"),
                ("human", "{question}"),
            ]
        )
        chain = prompt | RunnableLambda(self._record) | FakeListChatModel(responses=answers)
        self.runnable = RunnableWithMessageHistory(
            chain,
            store.history,  # its parameters name the two config fields below
            input_messages_key="question",
            history_messages_key="history",
            history_factory_config=[
                ConfigurableFieldSpec(id="owner", annotation=str, is_shared=True),
                ConfigurableFieldSpec(id="conversation_id", annotation=str, is_shared=True),
            ],
        )

    def _record(self, value: PromptValue) -> PromptValue:
        self.seen.append(value.to_messages())
        return value


def config(owner: str, conversation_id: str) -> Any:
    return {"configurable": {"owner": owner, "conversation_id": conversation_id}}


@pytest.mark.filterwarnings("ignore:RunnableWithMessageHistory is deprecated")
def test_runnable_with_message_history_continues_a_request_id(
    database: Database, settings: Settings
) -> None:
    store = ConversationStore(database, settings)
    chain = RecordingChain(store, ["答一", "答二", "答三"])
    first = chain.runnable.invoke({"question": "问一"}, config("key-a", "req-7"))
    assert first.content == "答一"
    second = chain.runnable.invoke({"question": "问二"}, config("key-a", "req-7"))
    assert second.content == "答二"
    assert texts(chain.seen[1]) == [
        ("system", "你是一个助手。"),
        ("human", "问一"),
        ("ai", "答一"),
        ("human", "问二"),
    ]
    # the same request_id under another key starts empty
    chain.runnable.invoke({"question": "别人的问题"}, config("key-b", "req-7"))
    assert texts(chain.seen[2]) == [("system", "你是一个助手。"), ("human", "别人的问题")]
    assert texts(store.history("key-a", "req-7").messages) == [
        ("human", "问一"),
        ("ai", "答一"),
        ("human", "问二"),
        ("ai", "答二"),
    ]


@pytest.mark.filterwarnings("ignore:RunnableWithMessageHistory is deprecated")
async def test_runnable_with_message_history_async_and_streaming(
    database: Database, settings: Settings
) -> None:
    try:
        store = ConversationStore(
            database, settings.model_copy(update={"conversation_max_messages": 2})
        )
        chain = RecordingChain(store, ["甲", "乙丙", "丁"])
        assert (await chain.runnable.ainvoke({"question": "一"}, config("key-a", "s"))).content == (
            "甲"
        )
        chunks = [
            chunk.content
            async for chunk in chain.runnable.astream({"question": "二"}, config("key-a", "s"))
        ]
        assert "".join(str(c) for c in chunks) == "乙丙" and len(chunks) == 2
        await chain.runnable.ainvoke({"question": "三"}, config("key-a", "s"))
        # the window of 2 replays only the newest turn
        assert texts(chain.seen[2]) == [
            ("system", "你是一个助手。"),
            ("human", "二"),
            ("ai", "乙丙"),
            ("human", "三"),
        ]
        stored = PostgresChatMessageHistory(database, "key-a", "s").messages
        assert texts(stored) == [
            ("human", "一"),
            ("ai", "甲"),
            ("human", "二"),
            ("ai", "乙丙"),
            ("human", "三"),
            ("ai", "丁"),
        ]
        assert not any(isinstance(m, SystemMessage) for m in stored)
        # the streamed answer was stored as the message it adds up to, not as a chunk
        assert type(stored[3]) is AIMessage
    finally:
        await database.close_async_pool()
