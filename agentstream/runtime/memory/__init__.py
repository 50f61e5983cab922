"""Memory in three tiers: working memory (the context of each model call,
assembled under a token budget), episodic memory (JetStream KV, TTL per key)
and long-term memory (a vector index behind the memory service).

The pure parts (``tokens``, ``context``, ``gate``, ``model``) import only the
contracts: they are tested without a broker. See docs/memory.md.
"""
