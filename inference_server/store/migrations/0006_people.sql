-- Known people (issue 18): the household's enrolled people, their face and body embeddings, and
-- what each person detection was recognised as. Embeddings are float arrays (the embedded
-- PostgreSQL has no vector type); matching is exact, in the server (embedding/matching.py).
-- Vectors of different models are not comparable: each row names the model file that made it.

CREATE TABLE people (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    -- The Home Assistant person entity (person.anna), whose state says whether they are home.
    entity_id   text CHECK (entity_id ~ '^person\.[a-z0-9_]+$'),
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX people_name ON people (lower(name));
CREATE UNIQUE INDEX people_entity ON people (entity_id) WHERE entity_id IS NOT NULL;

-- Deleting a person deletes every embedding of theirs.
CREATE TABLE person_embeddings (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    person_id     bigint NOT NULL REFERENCES people (id) ON DELETE CASCADE,
    source        text NOT NULL CHECK (source IN ('face', 'body')),
    model         text NOT NULL,
    vector        real[] NOT NULL CHECK (cardinality(vector) BETWEEN 16 AND 4096),
    -- Where it came from: an uploaded photo, or a stored detection (kept if that detection goes).
    origin        text NOT NULL CHECK (origin IN ('upload', 'detection')),
    detection_id  bigint REFERENCES detections (id) ON DELETE SET NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX person_embeddings_person ON person_embeddings (person_id);

-- Each embedded person detection's vectors: what enrolling from an event reads, and what links
-- the same unknown person over a batch's images. Deleted with the detection (retention).
CREATE TABLE detection_embeddings (
    detection_id  bigint NOT NULL REFERENCES detections (id) ON DELETE CASCADE,
    source        text NOT NULL CHECK (source IN ('face', 'body')),
    model         text NOT NULL,
    vector        real[] NOT NULL CHECK (cardinality(vector) BETWEEN 16 AND 4096),
    PRIMARY KEY (detection_id, source)
);

-- What an embedded person detection was recognised as: an enrolled person (person_id, with the
-- similarity and the source that decided), or unknown (person_id NULL). `visitor` is the id of
-- the first detection of the same unknown person in the batch (itself for a first sighting).
-- Forgetting a person removes the identities that named them.
CREATE TABLE detection_identities (
    detection_id  bigint PRIMARY KEY REFERENCES detections (id) ON DELETE CASCADE,
    person_id     bigint REFERENCES people (id) ON DELETE CASCADE,
    similarity    real,
    -- face: a face was embedded (a match, or an unfamiliar face); body: only the body was.
    source        text NOT NULL CHECK (source IN ('face', 'body')),
    visitor       bigint
);
CREATE INDEX detection_identities_person ON detection_identities (person_id) WHERE person_id IS NOT NULL;
