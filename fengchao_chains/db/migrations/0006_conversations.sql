-- Conversation memory for /aigc request_id: one row per (owner api_key, conversation id) and
-- its messages in the order they were written.  The conversation row is what writers lock
-- (an upsert) so that two writers of one conversation queue up and each turn's messages get
-- consecutive ids; deleting it deletes its messages.

CREATE TABLE conversations (
    owner text NOT NULL CHECK (char_length(owner) BETWEEN 1 AND 256),
    conversation_id text NOT NULL CHECK (char_length(conversation_id) BETWEEN 1 AND 128),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (owner, conversation_id)
);

-- housekeeping deletes conversations idle for longer than the retention time
CREATE INDEX conversations_updated_at ON conversations (updated_at);

CREATE TABLE conversation_messages (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    owner text NOT NULL,
    conversation_id text NOT NULL,
    -- langchain_core.messages.message_to_dict: {"type": ..., "data": {...}}
    message jsonb NOT NULL CHECK (jsonb_typeof(message) = 'object' AND message ? 'type'),
    created_at timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (owner, conversation_id)
        REFERENCES conversations (owner, conversation_id) ON DELETE CASCADE
);

-- reads (the newest N of one conversation) and the cascade both go through this index
CREATE INDEX conversation_messages_by_conversation
    ON conversation_messages (owner, conversation_id, id);
