-- Usage accounting (api消费统计): one row per model call, whichever front door it came
-- through.  run_id is the call's LangChain run id, unique so a call is recorded exactly once
-- even if a writer retries a batch.  Streams the client aborted or that failed midway are
-- rows too (status 'aborted' / 'error') with the tokens consumed so far; counts a vendor did
-- not report are tokenizer estimates (estimated = true).  cost is in the model card's unit.
CREATE TABLE usage_events (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id uuid NOT NULL UNIQUE,
    api_key text NOT NULL CHECK (char_length(api_key) BETWEEN 1 AND 256),
    model text NOT NULL CHECK (char_length(model) BETWEEN 1 AND 256),
    front_door text NOT NULL CHECK (front_door IN ('aigc', 'langserve', 'v1', 'task')),
    started_at timestamptz NOT NULL,
    ended_at timestamptz NOT NULL,
    latency_ms double precision NOT NULL CHECK (latency_ms >= 0),
    ttft_ms double precision CHECK (ttft_ms IS NULL OR ttft_ms >= 0),
    streamed boolean NOT NULL,
    status text NOT NULL CHECK (status IN ('ok', 'error', 'aborted')),
    error text,
    prompt_tokens integer NOT NULL CHECK (prompt_tokens >= 0),
    completion_tokens integer NOT NULL CHECK (completion_tokens >= 0),
    estimated boolean NOT NULL DEFAULT false,
    cost numeric(20, 10) NOT NULL CHECK (cost >= 0),
    unit text NOT NULL CHECK (unit IN ('CNY', 'USD')),
    request_id text
);

-- reports: one key over a time range, or all keys over a time range
CREATE INDEX usage_events_by_key_time ON usage_events (api_key, ended_at);
CREATE INDEX usage_events_by_time ON usage_events (ended_at);

-- An admin key sees every key's usage in the reports.
ALTER TABLE api_keys ADD COLUMN admin boolean NOT NULL DEFAULT false;
