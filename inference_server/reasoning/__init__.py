"""Risk reasoning: the rules engine, the LLM reasoner with its prompt, answer schema and circuit
breaker, and the LLM backends behind one small interface (``backends/``)."""
