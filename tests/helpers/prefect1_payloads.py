"""What the real prefect 1.4.1 client sends, as JSON: a flow as ``flow.register()``
serializes it, its tasks and edges as ``register_tasks``/``register_edges``
carry them, and states as ``State.serialize()`` gives them. For the tests of
the gateway's Prefect translation, which need no Prefect package."""

from __future__ import annotations

from typing import Any

V = "1.4.1"
NO_RESULT = {"type": "NoResultType", "__version__": V}


def prefect_flow(name: str, labels: list[str] | None = None) -> dict[str, Any]:
    """What ``flow.register()`` sends (decompressed): no tasks or edges, those
    follow in register_tasks and register_edges."""
    return {
        "name": name,
        "type": "prefect.core.flow.Flow",
        "schedule": None,
        "parameters": [
            {
                "slug": "name",
                "name": "name",
                "default": "world",
                "required": False,
                "outputs": "typing.Any",
                "tags": [],
                "type": "prefect.core.parameter.Parameter",
                "__version__": V,
            }
        ],
        "reference_tasks": [],
        "run_config": {"type": "UniversalRun", "labels": labels, "env": None, "__version__": V},
        "storage": {
            "type": "Local",
            "directory": "/home/user/.prefect/flows",
            "path": None,
            "stored_as_script": False,
            "flows": {name: f"/home/user/.prefect/flows/{name}/2026-12-01t21-50-31-890861-00-00"},
            "secrets": [],
            "__version__": V,
        },
        "__version__": V,
    }


def prefect_task(slug: str, name: str | None = None, **fields: Any) -> dict[str, Any]:
    """A task as Prefect 1.x serializes it for register_tasks (no id)."""
    return {
        "name": name or slug.rsplit("-", 1)[0],
        "slug": slug,
        "type": "prefect.tasks.core.function.FunctionTask",
        "tags": [],
        "max_retries": 0,
        "retry_delay": None,
        "trigger": {"fn": "prefect.triggers.all_successful", "kwargs": {}},
        "cache_key": None,
        "cache_for": None,
        "cache_validator": {"fn": "prefect.engine.cache_validators.never_use", "kwargs": {}},
        "inputs": {},
        "outputs": "typing.Any",
        "timeout": None,
        "skip_on_upstream_skip": True,
        "auto_generated": False,
        "__version__": V,
        **fields,
    }


def prefect_edge(upstream: str, downstream: str, key: str | None = None) -> dict[str, Any]:
    """An edge as Prefect 1.x serializes it: its tasks named by slug."""
    return {
        "upstream_task": {"slug": upstream, "__version__": V},
        "downstream_task": {"slug": downstream, "__version__": V},
        "key": key,
        "mapped": False,
        "flattened": False,
        "__version__": V,
    }


def prefect_state(state_type: str, message: Any = None, **extra: Any) -> dict[str, Any]:
    """A state as Prefect 1.x's ``State.serialize()`` gives it (and as the gateway
    builds it for a state flowbus's own clients set)."""
    return {
        "type": state_type,
        "message": message,
        "_result": NO_RESULT,
        "context": {},
        "cached_inputs": {},
        "__version__": V,
        **extra,
    }
