"""The engine: pure decision core, ports and adapters, consumer loop, CLI, client."""
