-- Known people (issue 18), their vectors as float32 bytes (issue 20). A `real[]` reached the
-- server as a Python list of floats, each a Python object made by asyncpg: recognition's reads
-- (the household at every reload, the strangers' sightings, the batch's visitors) cost 384 ms of
-- the server's CPU for 6,400 vectors, against 26 ms for the same vectors as `bytea` read by
-- NumPy (docs/performance.md). A vector is now its float32 values, big-endian (network order,
-- what PostgreSQL's own `float4send` writes, so the rows already stored convert here in SQL),
-- 16 to 4,096 of them as before. A NULL value (only hand-written SQL could store one) becomes
-- NaN, so every vector keeps its length (a NaN vector matches nothing).

CREATE FUNCTION pg_temp.float32_bytes(v real[]) RETURNS bytea
    LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT coalesce(string_agg(float4send(coalesce(x, 'NaN'::real)), ''::bytea ORDER BY n), ''::bytea)
    FROM unnest(v) WITH ORDINALITY AS u(x, n)
$$;

ALTER TABLE person_embeddings DROP CONSTRAINT person_embeddings_vector_check;
ALTER TABLE person_embeddings ALTER COLUMN vector TYPE bytea USING pg_temp.float32_bytes(vector);
ALTER TABLE person_embeddings ADD CONSTRAINT person_embeddings_vector_check
    CHECK (octet_length(vector) BETWEEN 64 AND 16384 AND octet_length(vector) % 4 = 0);

ALTER TABLE detection_embeddings DROP CONSTRAINT detection_embeddings_vector_check;
ALTER TABLE detection_embeddings ALTER COLUMN vector TYPE bytea USING pg_temp.float32_bytes(vector);
ALTER TABLE detection_embeddings ADD CONSTRAINT detection_embeddings_vector_check
    CHECK (octet_length(vector) BETWEEN 64 AND 16384 AND octet_length(vector) % 4 = 0);

DROP FUNCTION pg_temp.float32_bytes(real[]);
