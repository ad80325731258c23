"""The host agent; ``python -m nimbus.host_agent.main`` runs it."""
