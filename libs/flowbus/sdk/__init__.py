"""The flowbus SDK: flows, tasks, parameters, schedules and the run context."""
