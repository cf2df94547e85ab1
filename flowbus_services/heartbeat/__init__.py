"""Heartbeat service: liveness of runs and agents, the agent registry."""
