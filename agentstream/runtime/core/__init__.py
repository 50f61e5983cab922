"""The pure decision core: imports only agentstream.contracts, never a broker, model or clock."""
