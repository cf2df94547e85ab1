"""Database plumbing: tables, engines, migrations and the outbox."""
