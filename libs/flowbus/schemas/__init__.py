"""The pydantic messages every flowbus component exchanges over NATS.

Every message is frozen and strict (``extra="forbid"``). Database tables
live in flowbus.db and are never published as they are.
"""
