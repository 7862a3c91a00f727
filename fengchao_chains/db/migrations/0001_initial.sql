-- The first migration: an instance record, so `fengchao db` can tell when this database was
-- set up and by which release.  Tables of later features (keys, usage, tasks, history,
-- knowledge bases, uploads) arrive as further numbered files beside this one.
-- Runs with search_path set to the project schema, inside one transaction.

CREATE TABLE instance (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    created_at timestamptz NOT NULL DEFAULT now(),
    created_by_version text NOT NULL
);

INSERT INTO instance (created_by_version) VALUES (current_setting('fengchao.version'));
