"""Service wiring: builds a running replica (agents and tool workers) from an App and the environment."""
