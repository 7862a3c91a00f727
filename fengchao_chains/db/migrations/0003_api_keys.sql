-- API keys (安全中心): each api_key has a secret_key that signs the key's HS256 tokens.  The
-- secret is stored only as a Fernet token encrypted with the server's master key (never in
-- plain text), so a copy of the database alone cannot sign tokens.  A revoked key is kept
-- (revoked_at set) so its name and history stay visible in `fengchao keys list`.  The name
-- 'anonymous' is reserved for callers of a server running without authentication.

CREATE TABLE api_keys (
    api_key text PRIMARY KEY
        CHECK (api_key ~ '^[A-Za-z0-9_.-]{8,128}$' AND api_key <> 'anonymous'),
    name text CHECK (name IS NULL OR length(name) BETWEEN 1 AND 200),
    secret_ciphertext text NOT NULL CHECK (secret_ciphertext <> ''),
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);
