-- Issue 19 (clips, tampering): video clips kept as an event's evidence, their sampled frames as
-- images of the camera; the per-camera scene baseline that tells tampering from dusk; and the
-- tamper episodes (covered, blinded, pointed elsewhere, out of focus) it has raised.

CREATE TABLE clips (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    camera_id       text NOT NULL REFERENCES cameras (id) ON DELETE CASCADE,
    sha256          bytea NOT NULL,
    path            text NOT NULL,
    media_type      text NOT NULL,
    original_name   text,
    codec           text NOT NULL,
    width           integer NOT NULL,
    height          integer NOT NULL,
    duration_s      double precision NOT NULL,
    frames_decoded  integer NOT NULL,
    frames_sampled  integer NOT NULL,
    size_bytes      bigint NOT NULL,
    started_at      timestamptz NOT NULL,
    received_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (camera_id, sha256)
);
CREATE INDEX clips_received ON clips (received_at);

-- A sampled frame's clip and its time in it.
ALTER TABLE images
    ADD COLUMN clip_id bigint REFERENCES clips (id) ON DELETE SET NULL,
    ADD COLUMN clip_offset_s double precision;
CREATE INDEX images_clip ON images (clip_id) WHERE clip_id IS NOT NULL;

-- One row per camera: the learned scene (a contrast-normalised grey thumbnail, float32) and the
-- hysteresis counters, so a restart keeps both.
CREATE TABLE camera_tamper (
    camera_id      text PRIMARY KEY REFERENCES cameras (id) ON DELETE CASCADE,
    thumb_w        smallint NOT NULL,
    thumb_h        smallint NOT NULL,
    baseline       bytea NOT NULL,
    sharpness      double precision NOT NULL,
    contrast       double precision NOT NULL,
    brightness     double precision NOT NULL,
    learned        integer NOT NULL,
    abnormal_run   integer NOT NULL DEFAULT 0,
    normal_run     integer NOT NULL DEFAULT 0,
    pending_kind   text,
    tampered       boolean NOT NULL DEFAULT false,
    kind           text CHECK (kind IN ('covered', 'blinded', 'moved', 'blurred')),
    since          timestamptz,
    episode_id     bigint,
    updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE tamper_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    camera_id   text NOT NULL REFERENCES cameras (id) ON DELETE CASCADE,
    kind        text NOT NULL CHECK (kind IN ('covered', 'blinded', 'moved', 'blurred')),
    started_at  timestamptz NOT NULL,
    ended_at    timestamptz,
    image_id    bigint REFERENCES images (id) ON DELETE SET NULL,
    detail      jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX tamper_events_camera_time ON tamper_events (camera_id, started_at DESC);
