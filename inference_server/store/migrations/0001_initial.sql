-- Walking skeleton schema: cameras, images, jobs, detections, events, outbox, quarantine.

CREATE TABLE cameras (
    id          text PRIMARY KEY CHECK (id ~ '^[a-z0-9][a-z0-9_-]{0,63}$'),
    name        text NOT NULL,
    folder      text UNIQUE,
    enabled     boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE images (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    camera_id           text NOT NULL REFERENCES cameras (id) ON DELETE CASCADE,
    sha256              bytea NOT NULL,
    path                text NOT NULL,
    source              text NOT NULL CHECK (source IN ('folder', 'upload', 'mqtt')),
    original_name       text,
    media_type          text NOT NULL,
    width               integer NOT NULL,
    height              integer NOT NULL,
    size_bytes          integer NOT NULL,
    captured_at         timestamptz NOT NULL,
    captured_at_source  text NOT NULL CHECK (captured_at_source IN ('filename', 'mtime', 'client', 'received')),
    received_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (camera_id, sha256)
);
CREATE INDEX images_camera_time ON images (camera_id, captured_at DESC);

CREATE TABLE jobs (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    image_id      bigint NOT NULL REFERENCES images (id) ON DELETE CASCADE,
    camera_id     text NOT NULL,
    state         text NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'running', 'done', 'dead')),
    attempts      integer NOT NULL DEFAULT 0,
    max_attempts  integer NOT NULL CHECK (max_attempts >= 1),
    run_after     timestamptz NOT NULL DEFAULT now(),
    lease_until   timestamptz,
    worker_id     text,
    last_error    text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz
);
CREATE INDEX jobs_ready ON jobs (run_after, id) WHERE state = 'queued';
CREATE INDEX jobs_leased ON jobs (lease_until) WHERE state = 'running';
CREATE INDEX jobs_dead ON jobs (updated_at) WHERE state = 'dead';
CREATE INDEX jobs_image ON jobs (image_id);

CREATE TABLE detections (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    image_id     bigint NOT NULL REFERENCES images (id) ON DELETE CASCADE,
    camera_id    text NOT NULL REFERENCES cameras (id) ON DELETE CASCADE,
    label        text NOT NULL,
    category     text NOT NULL CHECK (category IN ('person', 'vehicle', 'animal', 'object')),
    confidence   double precision NOT NULL CHECK (confidence >= 0 AND confidence <= 1),
    x1           double precision NOT NULL CHECK (x1 >= 0 AND x1 <= 1),
    y1           double precision NOT NULL CHECK (y1 >= 0 AND y1 <= 1),
    x2           double precision NOT NULL CHECK (x2 >= 0 AND x2 <= 1),
    y2           double precision NOT NULL CHECK (y2 >= 0 AND y2 <= 1),
    zone         text,
    enrichment   jsonb NOT NULL DEFAULT '{}'::jsonb,
    detected_at  timestamptz NOT NULL
);
CREATE INDEX detections_camera_time ON detections (camera_id, detected_at DESC);
CREATE INDEX detections_image ON detections (image_id);

CREATE TABLE events (
    id               uuid PRIMARY KEY,
    camera_id        text NOT NULL REFERENCES cameras (id) ON DELETE CASCADE,
    image_id         bigint REFERENCES images (id) ON DELETE SET NULL,
    started_at       timestamptz NOT NULL,
    ended_at         timestamptz,
    risk_score       smallint NOT NULL CHECK (risk_score BETWEEN 0 AND 100),
    risk_level       text NOT NULL CHECK (risk_level IN ('low', 'medium', 'high', 'critical')),
    summary          text NOT NULL,
    reasoning        text NOT NULL,
    risk_factors     jsonb NOT NULL,
    objects          jsonb NOT NULL,
    analysis_source  text NOT NULL CHECK (analysis_source IN ('llm', 'rules')),
    is_fast_path     boolean NOT NULL DEFAULT false,
    snapshot_path    text,
    reviewed         boolean NOT NULL DEFAULT false,
    notes            text,
    feedback         text CHECK (feedback IN ('false_alarm', 'correct', 'missed_threat')),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_camera_time ON events (camera_id, started_at DESC);
CREATE INDEX events_time ON events (started_at DESC, id DESC);
CREATE INDEX events_risk ON events (risk_score);
CREATE INDEX events_unreviewed ON events (started_at) WHERE NOT reviewed;

CREATE TABLE outbox (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic       text NOT NULL,
    payload     bytea NOT NULL,
    retain      boolean NOT NULL DEFAULT false,
    qos         smallint NOT NULL DEFAULT 1 CHECK (qos IN (0, 1, 2)),
    created_at  timestamptz NOT NULL DEFAULT now(),
    sent_at     timestamptz,
    attempts    integer NOT NULL DEFAULT 0,
    last_error  text
);
CREATE INDEX outbox_pending ON outbox (id) WHERE sent_at IS NULL;

CREATE TABLE quarantine (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    camera_id      text,
    original_path  text NOT NULL,
    stored_path    text,
    reason         text NOT NULL,
    detail         text NOT NULL,
    size_bytes     bigint,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX quarantine_time ON quarantine (created_at DESC);
