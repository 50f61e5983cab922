"""Configuration from the environment (twelve-factor): settings every layer above reads."""
