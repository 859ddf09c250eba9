-- The people tables' vectors stay in their rows (stop 41). A face's vector is 1,024 floats (4 kB),
-- a body's 1,280 (5 kB): over PostgreSQL's 2 kB threshold, each was tried with pglz (floats do not
-- compress) and moved out of line into the table's TOAST relation, so every insert wrote it there
-- too and every read fetched it back through the TOAST index. Raising the tables' threshold to
-- its largest (a tuple that fills a page) keeps a vector of up to about 2,000 floats in its row,
-- untouched; a larger one is still moved out of line. New rows only: those stored before stay as
-- they are and read the same.
ALTER TABLE person_embeddings SET (toast_tuple_target = 8160);
ALTER TABLE detection_embeddings SET (toast_tuple_target = 8160);
