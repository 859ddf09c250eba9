-- Vision-language phase two (issue 17): the key frames the model was shown (image ids, best
-- first) and the activity it named, as columns so events can be filtered by them; the rest of
-- the model's reading (description, threat indicators, its observations, confidence) stays in
-- llm_result. Existing events were judged without frames: an empty list, no activity.

ALTER TABLE events
    ADD COLUMN llm_frames bigint[] NOT NULL DEFAULT '{}',
    ADD COLUMN activity text;
