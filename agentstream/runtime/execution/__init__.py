"""Execution: the engine that applies core decisions, the tool runner, the consumer loop, retries and breakers."""
