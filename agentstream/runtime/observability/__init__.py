"""Observability: tracing, metrics, logs, redaction, and the views (trace, stats, timeline) read back from the streams."""
