"""The executable schema: every ``graphql/*.graphql`` file, with the resolvers of each area.

Each area of the API keeps its SDL in its own file (``extend type Query``,
``extend type Mutation``, ...) and exports ``BINDABLES`` from its module,
listed in ``AREAS``. Reads and writes nothing on NATS.
"""

from __future__ import annotations

import importlib
from functools import cache
from pathlib import Path

from ariadne import SchemaBindable, load_schema_from_path, make_executable_schema
from graphql import GraphQLSchema

from flowbus_services.gateway.scalars import SCALARS

SDL_DIR = Path(__file__).parent / "graphql"
# The modules whose BINDABLES resolve the schema's fields, in binding order.
AREAS = [
    "flowbus_services.gateway.root",
    "flowbus_services.gateway.queries",
    "flowbus_services.gateway.keys_api",
    "flowbus_services.gateway.schedules",
    "flowbus_services.gateway.mutations",
    "flowbus_services.gateway.subscriptions",
]


@cache
def build_schema() -> GraphQLSchema:
    bindables: list[SchemaBindable] = [*SCALARS]
    for module in AREAS:
        bindables.extend(importlib.import_module(module).BINDABLES)
    return make_executable_schema(load_schema_from_path(str(SDL_DIR)), *bindables)
