"""The HTTP gateway: GraphQL in Prefect Server 1.x's language, health, API keys."""
