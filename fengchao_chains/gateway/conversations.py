"""Conversation memory: the turns of one ``request_id`` kept in PostgreSQL.

``PostgresChatMessageHistory`` is LangChain's chat-message-history interface over two tables
(``0006_conversations.sql``), so ``RunnableWithMessageHistory`` or the gateway's chat chain
read the earlier turns of a conversation and append the new one.  A conversation belongs to
an owner (the caller's api_key): the same request_id under two keys is two conversations, and
no call can name another owner's.

Guarantees:

* **a turn is atomic**: ``add_messages`` writes all its messages (the human message and the
  answer) in one transaction, or none of them;
* **order is kept under concurrency**: a writer first upserts the conversation's row, which
  locks it, so two writers of one conversation queue up and each one's messages get
  consecutive ids, in commit order;
* **a bounded window**: with ``max_messages`` a read returns at most the newest N messages,
  starting at a human message so that a turn is never replayed without its question.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, LiteralString

import psycopg
from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.messages import (
    BaseMessage,
    HumanMessage,
    message_chunk_to_message,
    message_to_dict,
    messages_from_dict,
)
from psycopg.types.json import Jsonb

from fengchao_chains.db import Database
from fengchao_chains.errors import FengchaoError, one_line
from fengchao_chains.settings import Settings

MAX_CONVERSATION_ID_CHARS = 128
MAX_OWNER_CHARS = 256


class ConversationIdError(FengchaoError, ValueError):
    """A conversation id (request_id) or owner that cannot name a conversation."""


class MessageNotStorableError(FengchaoError, ValueError):
    """A message that cannot be stored as JSON in PostgreSQL; nothing of its turn was written."""


def validate_conversation_id(conversation_id: str) -> str:
    """``conversation_id`` if it is 1-128 printable characters, else ConversationIdError."""
    return _validated("conversation id (request_id)", conversation_id, MAX_CONVERSATION_ID_CHARS)


def _validated(what: str, value: object, max_chars: int) -> str:
    if not isinstance(value, str):
        raise ConversationIdError(f"the {what} must be a string, not {type(value).__name__}")
    if not 1 <= len(value) <= max_chars:
        raise ConversationIdError(
            f"the {what} must be 1 to {max_chars} characters long, not {len(value)}"
        )
    if not value.isprintable():
        raise ConversationIdError(
            f"the {what} must be printable characters only (no control characters or newlines)"
        )
    return value


_UPSERT_CONVERSATION: LiteralString = (
    "INSERT INTO conversations (owner, conversation_id) VALUES (%s, %s)"
    " ON CONFLICT (owner, conversation_id) DO UPDATE SET updated_at = now()"
)
_INSERT_MESSAGE: LiteralString = (
    "INSERT INTO conversation_messages (owner, conversation_id, message) VALUES (%s, %s, %s)"
)
_SELECT_ALL: LiteralString = (
    "SELECT message FROM conversation_messages"
    " WHERE owner = %s AND conversation_id = %s ORDER BY id"
)
_SELECT_NEWEST: LiteralString = (
    "SELECT message FROM (SELECT id, message FROM conversation_messages"
    " WHERE owner = %s AND conversation_id = %s ORDER BY id DESC LIMIT %s) AS newest"
    " ORDER BY id"
)
_DELETE_CONVERSATION: LiteralString = (
    "DELETE FROM conversations WHERE owner = %s AND conversation_id = %s"
)
_DELETE_IDLE: LiteralString = (
    "DELETE FROM conversations WHERE updated_at < now() - make_interval(secs => %s)"
)

# what a message that cannot be stored raises while its row is sent: json.dumps' TypeError
# (an object JSON has no type for) or ValueError (a circular reference), or PostgreSQL's
# DataError (jsonb refuses \u0000 and NaN)
_NOT_STORABLE = (psycopg.DataError, TypeError, ValueError)


class PostgresChatMessageHistory(BaseChatMessageHistory):
    """The messages of one owner's conversation, sync (the sync pool) and async (the async
    pool of the running event loop, opened on first use).

    ``max_messages``: None returns every stored message; N > 0 the newest N from a human
    message on; 0 turns memory off (reads return nothing and writes store nothing).
    """

    def __init__(
        self,
        database: Database,
        owner: str,
        conversation_id: str,
        *,
        max_messages: int | None = None,
    ) -> None:
        super().__init__()
        if max_messages is not None and max_messages < 0:
            raise ValueError(f"max_messages must be 0 (memory off) or more, not {max_messages}")
        self.database = database
        self.owner = _validated("owner", owner, MAX_OWNER_CHARS)
        self.conversation_id = validate_conversation_id(conversation_id)
        self.max_messages = max_messages

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(owner={self.owner!r},"
            f" conversation_id={self.conversation_id!r}, max_messages={self.max_messages})"
        )

    @property
    def enabled(self) -> bool:
        """False when ``max_messages`` is 0: nothing is read or written."""
        return self.max_messages != 0

    # ------------------------------------------------------------------ read -------------
    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]  # base: an attribute
        return self.get_messages()

    def get_messages(self) -> list[BaseMessage]:
        """The stored messages, oldest first, within the ``max_messages`` window."""
        if not self.enabled:
            return []
        query, params = self._select()
        with self.database.pool.connection() as conn:
            rows = conn.execute(query, params).fetchall()
        return self._window([row[0] for row in rows])

    async def aget_messages(self) -> list[BaseMessage]:
        if not self.enabled:
            return []
        query, params = self._select()
        pool = await self.database.open_async_pool()
        async with pool.connection() as conn:
            cursor = await conn.execute(query, params)
            rows = await cursor.fetchall()
        return self._window([row[0] for row in rows])

    def _select(self) -> tuple[LiteralString, tuple[Any, ...]]:
        if self.max_messages is None:
            return _SELECT_ALL, (self.owner, self.conversation_id)
        return _SELECT_NEWEST, (self.owner, self.conversation_id, self.max_messages)

    def _window(self, stored: list[dict[str, Any]]) -> list[BaseMessage]:
        """The messages from the first human one on, when the window may have cut a turn."""
        messages = messages_from_dict(stored)
        if self.max_messages is None:
            return messages
        for start, message in enumerate(messages):
            if isinstance(message, HumanMessage):
                return messages[start:]
        return []

    # ------------------------------------------------------------------ write ------------
    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        """Append ``messages`` as one turn: all of them in one transaction, or none."""
        if not self.enabled or not messages:
            return
        rows = self._rows(messages)
        try:
            with (
                self.database.pool.connection() as conn,
                conn.transaction(),
                conn.cursor() as cur,
            ):
                cur.execute(_UPSERT_CONVERSATION, (self.owner, self.conversation_id))
                cur.executemany(_INSERT_MESSAGE, rows)
        except _NOT_STORABLE as exc:
            raise self._not_storable(exc) from None

    async def aadd_messages(self, messages: Sequence[BaseMessage]) -> None:
        if not self.enabled or not messages:
            return
        rows = self._rows(messages)
        pool = await self.database.open_async_pool()
        try:
            async with pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
                await cur.execute(_UPSERT_CONVERSATION, (self.owner, self.conversation_id))
                await cur.executemany(_INSERT_MESSAGE, rows)
        except _NOT_STORABLE as exc:
            raise self._not_storable(exc) from None

    def _rows(self, messages: Sequence[BaseMessage]) -> list[tuple[str, str, Jsonb]]:
        """One row per message; the JSON is made while the rows are sent, inside the
        transaction, so a message that cannot be stored rolls back its whole turn.  A streamed
        answer arrives as a chunk (``AIMessageChunk``) and is stored as the message it adds
        up to, so a later read gives the same types whether the turn was streamed or not."""
        for message in messages:
            if not isinstance(message, BaseMessage):
                raise MessageNotStorableError(
                    f"a conversation stores LangChain messages, not {type(message).__name__}"
                )
        return [
            (
                self.owner,
                self.conversation_id,
                Jsonb(message_to_dict(message_chunk_to_message(message))),
            )
            for message in messages
        ]

    def _not_storable(self, exc: BaseException) -> MessageNotStorableError:
        return MessageNotStorableError(
            f"a message of conversation {self.conversation_id!r} cannot be stored and its turn"
            f" was not written: {one_line(exc)}"
        )

    # ------------------------------------------------------------------ clear ------------
    def clear(self) -> None:
        """Delete the conversation and all its messages."""
        with self.database.pool.connection() as conn:
            conn.execute(_DELETE_CONVERSATION, (self.owner, self.conversation_id))

    async def aclear(self) -> None:
        pool = await self.database.open_async_pool()
        async with pool.connection() as conn:
            await conn.execute(_DELETE_CONVERSATION, (self.owner, self.conversation_id))


class ConversationStore:
    """The conversations of every owner, with the window from the settings
    (``conversation_max_messages``; 0 turns memory off)."""

    def __init__(self, database: Database, settings: Settings) -> None:
        self.database = database
        self.max_messages = settings.conversation_max_messages

    @property
    def enabled(self) -> bool:
        return self.max_messages != 0

    def history(self, owner: str, conversation_id: str) -> PostgresChatMessageHistory:
        """The history of ``owner``'s conversation ``conversation_id`` (ConversationIdError
        when the id is not 1-128 printable characters)."""
        return PostgresChatMessageHistory(
            self.database, owner, conversation_id, max_messages=self.max_messages
        )

    async def adelete_older_than(self, seconds: int) -> int:
        """Delete the conversations nobody has written to for ``seconds``; returns how many.

        A conversation being written at that moment is kept: its writer holds its row, and
        the delete re-checks the row's new ``updated_at`` once the writer commits.
        """
        if seconds < 0:
            raise ValueError(f"seconds must be 0 or more, not {seconds}")
        pool = await self.database.open_async_pool()
        async with pool.connection() as conn:
            cursor = await conn.execute(_DELETE_IDLE, (seconds,))
            return cursor.rowcount
