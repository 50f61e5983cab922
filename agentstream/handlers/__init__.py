"""Thin subscribers: decode, hand to the engine, let the consumer ack/nak/dead-letter."""
