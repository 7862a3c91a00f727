-- Uploaded files (POST /aigc/uploadfiles/).  The bytes live on disk under
-- <data_dir>/uploads/<id><suffix>, a name the server generates (the client's file name is
-- kept here for display only); the extracted text lives here, so a chat that uses the file
-- does not parse it again.  `owner` is the api_key that owns the file: set at upload when the
-- request carried a token, else NULL until the first authenticated chat that names the file
-- claims it (UPDATE ... WHERE owner IS NULL, so exactly one caller wins).  No foreign key:
-- the caller of a server without authentication is 'anonymous', which is not a stored key.

CREATE TABLE uploads (
    id text PRIMARY KEY CHECK (id ~ '^file-[0-9a-f]{32}$'),
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 255),
    suffix text NOT NULL CHECK (suffix ~ '^\.[a-z0-9]{1,15}$'),
    content_type text NOT NULL,
    size bigint NOT NULL CHECK (size > 0),
    owner text CHECK (owner IS NULL OR owner <> ''),
    text text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    claimed_at timestamptz
);

CREATE INDEX uploads_unclaimed ON uploads (created_at) WHERE owner IS NULL;
