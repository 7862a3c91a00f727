-- Per-key rate limits and budgets (docs/limits.md).  A key with a row here has exactly the
-- row's limits (NULL: no limit of that kind); a key without one has the server's defaults
-- (FENGCHAO_DEFAULT_RPM / FENGCHAO_DEFAULT_TPM).  A budget is an amount in CNY or USD per
-- period: 'total' (never renews), or the UTC 'day' or 'month'.
CREATE TABLE key_limits (
    api_key text PRIMARY KEY REFERENCES api_keys (api_key) ON DELETE CASCADE,
    rpm integer CHECK (rpm IS NULL OR rpm > 0),
    tpm integer CHECK (tpm IS NULL OR tpm > 0),
    budget numeric CHECK (budget IS NULL OR budget >= 0),
    budget_unit text CHECK (budget_unit IN ('CNY', 'USD')),
    budget_period text CHECK (budget_period IN ('total', 'day', 'month')),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CHECK ((budget IS NULL) = (budget_unit IS NULL) AND (budget IS NULL) = (budget_period IS NULL))
);

-- Fixed one-minute windows: requests admitted and tokens reserved (then settled to the real
-- count) per key.  The window a request falls in is decided by the server's clock.  Rows of
-- past windows are deleted by the hourly housekeeping.  No foreign key: the anonymous caller
-- of a server without authentication is counted too.
CREATE TABLE rate_windows (
    api_key text NOT NULL,
    window_start timestamptz NOT NULL,
    requests integer NOT NULL CHECK (requests >= 0),
    tokens bigint NOT NULL CHECK (tokens >= 0),
    PRIMARY KEY (api_key, window_start)
);

-- Spend per key and budget period, in the budget's unit: reserved at admission (the most the
-- call can cost), settled to the real cost when it ends.  'total' rows use period_start
-- 1970-01-01 and are kept; rows of ended days and months are deleted by the housekeeping.
CREATE TABLE budget_spend (
    api_key text NOT NULL,
    period text NOT NULL CHECK (period IN ('total', 'day', 'month')),
    period_start timestamptz NOT NULL,
    spent numeric NOT NULL CHECK (spent >= 0),
    PRIMARY KEY (api_key, period, period_start)
);

-- Admission in one round trip: count the request and reserve its tokens in the window unless
-- that passes the RPM or TPM limit, then reserve its cost unless that passes the budget (a
-- budget refusal takes the window's count back: the row lock held since the first upsert
-- means nobody saw it).  ON CONFLICT ... DO UPDATE ... WHERE locks the row and checks the
-- newest version, so concurrent admissions from any number of processes never overshoot.
-- NULL limits are skipped; p_rpm and p_tpm both NULL skip the window.  Returns the refused
-- limit (NULL when admitted) and the counters as they stand.
CREATE FUNCTION limits_admit(
    p_key text,
    p_window timestamptz,
    p_rpm integer,
    p_tpm integer,
    p_tokens integer,
    p_period text,
    p_period_start timestamptz,
    p_budget numeric,
    p_cost numeric
) RETURNS TABLE (refused text, used_requests integer, used_tokens bigint, used_spend numeric)
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    w_requests integer;
    w_tokens bigint;
    b_spent numeric;
BEGIN
    IF p_rpm IS NOT NULL OR p_tpm IS NOT NULL THEN
        INSERT INTO rate_windows AS w (api_key, window_start, requests, tokens)
        VALUES (p_key, p_window, 1, p_tokens)
        ON CONFLICT (api_key, window_start) DO UPDATE
            SET requests = w.requests + 1, tokens = w.tokens + p_tokens
            WHERE (p_rpm IS NULL OR w.requests < p_rpm)
                AND (p_tpm IS NULL OR w.tokens + p_tokens <= p_tpm)
        RETURNING w.requests, w.tokens INTO w_requests, w_tokens;
        IF NOT FOUND THEN
            SELECT w.requests, w.tokens INTO w_requests, w_tokens
            FROM rate_windows AS w WHERE w.api_key = p_key AND w.window_start = p_window;
            RETURN QUERY SELECT
                CASE WHEN p_rpm IS NOT NULL AND w_requests >= p_rpm THEN 'rpm' ELSE 'tpm' END,
                w_requests, w_tokens, NULL::numeric;
            RETURN;
        END IF;
    END IF;
    IF p_budget IS NOT NULL THEN
        INSERT INTO budget_spend AS b (api_key, period, period_start, spent)
        SELECT p_key, p_period, p_period_start, p_cost WHERE p_cost <= p_budget
        ON CONFLICT (api_key, period, period_start) DO UPDATE
            SET spent = b.spent + p_cost
            WHERE b.spent + p_cost <= p_budget
        RETURNING b.spent INTO b_spent;
        IF NOT FOUND THEN
            IF w_requests IS NOT NULL THEN
                UPDATE rate_windows AS w
                SET requests = w.requests - 1, tokens = w.tokens - p_tokens
                WHERE w.api_key = p_key AND w.window_start = p_window;
                w_requests := w_requests - 1;
                w_tokens := w_tokens - p_tokens;
            END IF;
            SELECT b.spent INTO b_spent FROM budget_spend AS b
            WHERE b.api_key = p_key AND b.period = p_period AND b.period_start = p_period_start;
            RETURN QUERY SELECT 'budget'::text, w_requests, w_tokens, coalesce(b_spent, 0);
            RETURN;
        END IF;
    END IF;
    RETURN QUERY SELECT NULL::text, w_requests, w_tokens, b_spent;
END;
$$;
