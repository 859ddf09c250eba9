-- Event search (issue 19): a weighted full-text document per event, kept by triggers, with a GIN
-- index; and the digests sent, so a restarted server never sends the same period twice.
--
-- The document joins what one row does not hold (the camera's name, the detections' zones, the
-- people recognised), so it cannot be a generated column: a BEFORE trigger writes it on every
-- insert and update of an event; renaming a camera or a person, and a detection recognised
-- (or forgotten) later, rewrite the documents of the events concerned.
--   A: camera name, object labels, zones, identities     B: summary     C: the LLM's description
-- Identities (known people, migration 0006) enter through hsi_event_identities(image id): the
-- names of the enrolled people recognised in the event's picture. It reads the people tables
-- only where they exist, so this migration stands without them; a later change of how
-- identities are stored replaces that function (CREATE OR REPLACE) and runs
-- UPDATE events SET search_doc = NULL to re-index.

CREATE FUNCTION hsi_event_identities(image bigint) RETURNS text
    LANGUAGE plpgsql STABLE AS $$
DECLARE
    names text;
BEGIN
    IF image IS NULL OR to_regclass('detection_identities') IS NULL OR to_regclass('people') IS NULL THEN
        RETURN '';
    END IF;
    EXECUTE 'SELECT string_agg(DISTINCT p.name, '' '') FROM detections d'
        || ' JOIN detection_identities di ON di.detection_id = d.id JOIN people p ON p.id = di.person_id'
        || ' WHERE d.image_id = $1'
        INTO names USING image;
    RETURN coalesce(names, '');
END
$$;

CREATE FUNCTION hsi_event_search_doc() RETURNS trigger
    LANGUAGE plpgsql AS $$
DECLARE
    camera_name text;
    labels text;
    zones text;
BEGIN
    SELECT c.name INTO camera_name FROM cameras c WHERE c.id = NEW.camera_id;
    -- objects is {"label": count}; any other JSON (an array of labels, a scalar) must not make
    -- the event's write fail: its labels are then what the array holds, or none.
    SELECT string_agg(k, ' ') INTO labels FROM (
        SELECT jsonb_object_keys(NEW.objects) AS k WHERE jsonb_typeof(NEW.objects) = 'object'
        UNION ALL
        SELECT jsonb_array_elements_text(NEW.objects) WHERE jsonb_typeof(NEW.objects) = 'array'
    ) AS found;
    SELECT string_agg(DISTINCT replace(d.zone, ',', ' '), ' ') INTO zones
        FROM detections d WHERE d.image_id = NEW.image_id AND d.zone IS NOT NULL;
    NEW.search_doc :=
        setweight(to_tsvector('english', coalesce(camera_name, '') || ' ' || coalesce(labels, '') || ' '
                  || coalesce(zones, '') || ' ' || hsi_event_identities(NEW.image_id)), 'A')
        || setweight(to_tsvector('english', coalesce(NEW.summary, '')), 'B')
        || setweight(to_tsvector('english',
                  CASE WHEN NEW.llm_state = 'done' THEN coalesce(NEW.llm_result->>'description', '') ELSE '' END),
                  'C');
    RETURN NEW;
END
$$;

ALTER TABLE events ADD COLUMN search_doc tsvector;
CREATE TRIGGER events_search_doc BEFORE INSERT OR UPDATE ON events
    FOR EACH ROW EXECUTE FUNCTION hsi_event_search_doc();
-- Existing events get their documents now (the trigger computes them).
UPDATE events SET search_doc = NULL;
CREATE INDEX events_search ON events USING gin (search_doc);

CREATE FUNCTION hsi_camera_renamed() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    UPDATE events SET search_doc = NULL WHERE camera_id = NEW.id;
    RETURN NULL;
END
$$;
CREATE TRIGGER cameras_renamed AFTER UPDATE OF name ON cameras
    FOR EACH ROW WHEN (OLD.name IS DISTINCT FROM NEW.name) EXECUTE FUNCTION hsi_camera_renamed();

-- A detection recognised (or its identity removed, as when a person is forgotten) and a person
-- renamed: the events showing that detection or person are re-indexed.
DO $do$
BEGIN
    IF to_regclass('detection_identities') IS NULL OR to_regclass('people') IS NULL THEN
        RETURN;
    END IF;
    CREATE FUNCTION hsi_identity_changed() RETURNS trigger
        LANGUAGE plpgsql AS $$
    DECLARE
        changed bigint;
    BEGIN
        IF TG_OP = 'DELETE' THEN
            changed := OLD.detection_id;
        ELSE
            changed := NEW.detection_id;
        END IF;
        UPDATE events SET search_doc = NULL
            WHERE image_id IN (SELECT d.image_id FROM detections d WHERE d.id = changed);
        RETURN NULL;
    END
    $$;
    CREATE TRIGGER detection_identities_search AFTER INSERT OR UPDATE OR DELETE ON detection_identities
        FOR EACH ROW EXECUTE FUNCTION hsi_identity_changed();
    CREATE FUNCTION hsi_person_renamed() RETURNS trigger
        LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE events SET search_doc = NULL
            WHERE image_id IN (SELECT d.image_id FROM detections d
                               JOIN detection_identities di ON di.detection_id = d.id WHERE di.person_id = NEW.id);
        RETURN NULL;
    END
    $$;
    CREATE TRIGGER people_renamed AFTER UPDATE OF name ON people
        FOR EACH ROW WHEN (OLD.name IS DISTINCT FROM NEW.name) EXECUTE FUNCTION hsi_person_renamed();
END
$do$;

-- One row per digest made. A scheduled digest's period is unique: after a restart the scheduler
-- sees the night already sent and does not send it again.
CREATE TABLE digests (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind          text NOT NULL CHECK (kind IN ('scheduled', 'on_demand')),
    period_start  timestamptz NOT NULL,
    period_end    timestamptz NOT NULL CHECK (period_end > period_start),
    body          jsonb NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX digests_scheduled_period ON digests (period_start, period_end) WHERE kind = 'scheduled';
CREATE INDEX digests_created ON digests (created_at DESC);
