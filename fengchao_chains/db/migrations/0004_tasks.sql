-- Async chat tasks (/aigc/chat/ mode=async): a queue shared by every server process on this
-- schema.  A worker claims a task by setting a lease and a fresh claim token; only the holder
-- of the current token may complete, fail, renew or release it (fengchao_chains/gateway/
-- tasks.py).  The checks keep every row in one of four whole states: nothing half-written.

CREATE TABLE tasks (
    id text PRIMARY KEY CHECK (id ~ '^[0-9a-f]{32}$'),
    owner text NOT NULL CHECK (owner <> ''),
    status text NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'running', 'done', 'failed')),
    payload jsonb NOT NULL CHECK (jsonb_typeof(payload) = 'object'),
    result jsonb,
    error text,
    attempts integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    claim_token uuid,
    lease_until timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz,
    finished_at timestamptz,
    CONSTRAINT tasks_pending_is_unclaimed CHECK (
        status <> 'pending'
        OR (claim_token IS NULL AND lease_until IS NULL AND finished_at IS NULL)
    ),
    CONSTRAINT tasks_running_holds_a_lease CHECK (
        status <> 'running'
        OR (claim_token IS NOT NULL AND lease_until IS NOT NULL AND started_at IS NOT NULL
            AND finished_at IS NULL)
    ),
    CONSTRAINT tasks_done_has_a_result CHECK (
        status <> 'done' OR (result IS NOT NULL AND finished_at IS NOT NULL)
    ),
    CONSTRAINT tasks_failed_has_an_error CHECK (
        status <> 'failed' OR (error IS NOT NULL AND finished_at IS NOT NULL)
    )
);

-- what a claim scans: pending tasks oldest first, and running tasks by lease expiry
CREATE INDEX tasks_pending_by_age ON tasks (created_at, id) WHERE status = 'pending';
CREATE INDEX tasks_running_by_lease ON tasks (lease_until) WHERE status = 'running';
-- what the retention purge deletes
CREATE INDEX tasks_finished_by_time ON tasks (finished_at) WHERE finished_at IS NOT NULL;
