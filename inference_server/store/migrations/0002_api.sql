-- REST API v1: API keys, audit log, household context, camera zones.

CREATE TABLE api_keys (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key_id        text NOT NULL UNIQUE CHECK (key_id ~ '^[0-9a-f]{12}$'),
    name          text NOT NULL,
    salt          bytea NOT NULL,
    hash          bytea NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz,
    revoked_at    timestamptz
);
CREATE UNIQUE INDEX api_keys_active_name ON api_keys (name) WHERE revoked_at IS NULL;

CREATE TABLE audit_log (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now(),
    who        text NOT NULL,
    action     text NOT NULL,
    target_id  text,
    status     smallint NOT NULL,
    detail     jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_log_at ON audit_log (at DESC, id DESC);

CREATE TABLE household_context (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    context  jsonb NOT NULL,
    set_at   timestamptz NOT NULL DEFAULT now(),
    set_by   text NOT NULL
);
CREATE INDEX household_context_latest ON household_context (set_at DESC, id DESC);

ALTER TABLE cameras ADD COLUMN zones jsonb NOT NULL DEFAULT '[]'::jsonb;

-- Sent outbox rows are pruned by retention; this index finds them.
CREATE INDEX outbox_sent ON outbox (sent_at) WHERE sent_at IS NOT NULL;
