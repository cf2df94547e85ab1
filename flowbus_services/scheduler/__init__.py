"""Scheduler service: time. Releases due runs onto run queues."""
