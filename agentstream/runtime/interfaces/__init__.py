"""Interfaces: what people and programs call: the CLI, the Python client, the HTTP API and dashboard, approvals, lint."""
