"""Registration service: projects, flow groups, flows and their settings."""
