"""State service: flow-run and task-run states, their history, and logs."""
