"""Pipeline stages, one job per module: ``detect`` (decode, batched inference) → ``result``
(detections stored and handed to the camera's batch) → ``batch`` (batch windows, the rules phase,
events) → ``llm`` (the LLM phase); ``zones`` and ``snapshot`` serve them."""
