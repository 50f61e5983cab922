"""agentstream: an event-driven runtime for production LLM agents on NATS JetStream."""

__version__ = "0.1.0"
