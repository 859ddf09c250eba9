-- Known people (issue 18), continued.
--
-- 1. Household changes announced. Every worker process holds the household's embeddings in
--    memory (pipeline/identify.py); any change to people or person_embeddings bumps one version
--    row and sends NOTIFY hsi_people in the changing transaction (statement triggers: an API
--    call, a cascade from deleting a person, or hand-written SQL alike), so each process marks
--    its copy stale when the change commits, and a process that missed the notification (its
--    LISTEN connection was down) sees the version move at its periodic re-check.
CREATE TABLE people_version (
    one  boolean PRIMARY KEY DEFAULT true CHECK (one),
    n    bigint NOT NULL
);
INSERT INTO people_version (one, n) VALUES (true, 0);

CREATE FUNCTION hsi_people_changed() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    UPDATE people_version SET n = n + 1;
    PERFORM pg_notify('hsi_people', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER people_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON people
    FOR EACH STATEMENT EXECUTE FUNCTION hsi_people_changed();
CREATE TRIGGER person_embeddings_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON person_embeddings
    FOR EACH STATEMENT EXECUTE FUNCTION hsi_people_changed();

-- 2. Strangers: an unknown person seen again within `stranger_window_h` (face match, or a body
--    match where no face contradicts it) keeps one id across events, so "the same stranger came
--    back 3 times tonight" can be said. A stranger row holds no vector: the vectors are its
--    sightings' detection_embeddings, deleted with their detections by retention; retention
--    deletes a stranger once none of its sightings is left. `visits` counts sightings more than
--    `stranger_visit_gap_s` apart.
CREATE TABLE strangers (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    first_seen  timestamptz NOT NULL,
    last_seen   timestamptz NOT NULL,
    visits      integer NOT NULL DEFAULT 1 CHECK (visits >= 1)
);
CREATE INDEX strangers_last_seen ON strangers (last_seen);

-- The stranger an unknown sighting was linked to, and by what (face or body; NULL: its first
-- sighting). `stranger_seq` numbers the sightings in commit order (taken under the strangers'
-- transaction lock, store/people.py), so each worker process keeps the window's sightings in
-- memory and reads only those committed since its last read.
CREATE SEQUENCE stranger_sightings_seq;
ALTER TABLE detection_identities
    ADD COLUMN stranger_id bigint REFERENCES strangers (id) ON DELETE SET NULL,
    ADD COLUMN stranger_link text CHECK (stranger_link IN ('face', 'body')),
    ADD COLUMN stranger_seq bigint;
CREATE INDEX detection_identities_stranger ON detection_identities (stranger_id) WHERE stranger_id IS NOT NULL;
CREATE INDEX detection_identities_stranger_seq ON detection_identities (stranger_seq)
    WHERE stranger_seq IS NOT NULL;
