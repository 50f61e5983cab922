"""Adapters: the ports implemented over NATS JetStream, the embedded nats-server, OpenAI-compatible models, in-memory doubles."""
