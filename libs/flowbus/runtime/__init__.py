"""Shared service plumbing: NATS connections and streams, the outbox relay,
the envelope and validation middleware, health and telemetry."""
