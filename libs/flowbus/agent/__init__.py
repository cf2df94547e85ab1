"""The local agent and the flow-run runner it starts in a subprocess."""
