"""Limits checked before a query runs: how deep its selections nest.

A validation rule of graphql-core, so a too-deep query is refused with
``VALIDATION_ERROR`` before any resolver runs. Reads and writes nothing on NATS.
"""

from __future__ import annotations

from typing import Any

from graphql import (
    ASTValidationRule,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
    ValidationContext,
)

from flowbus_services.gateway.errors import Code


def depth_limit(max_depth: int) -> type[ASTValidationRule]:
    """A rule refusing operations whose fields nest deeper than ``max_depth``."""

    class DepthLimit(ASTValidationRule):
        def __init__(self, context: ValidationContext) -> None:
            super().__init__(context)
            self.fragments = {
                d.name.value: d for d in context.document.definitions if isinstance(d, FragmentDefinitionNode)
            }

        def enter_operation_definition(self, node: OperationDefinitionNode, *_args: Any) -> None:
            depth = self._depth(node.selection_set, 0, frozenset())
            if depth > max_depth:
                self.report_error(
                    GraphQLError(
                        f"The query nests {depth} levels deep; at most {max_depth} are allowed.",
                        node,
                        extensions={"code": Code.VALIDATION_ERROR.value},
                    )
                )

        def _depth(self, selections: SelectionSetNode | None, depth: int, seen: frozenset[str]) -> int:
            if selections is None or depth > max_depth:
                return depth  # deep enough to refuse: no need to walk further
            deepest = depth
            for selection in selections.selections:
                if isinstance(selection, FieldNode):
                    inner = selection.selection_set
                    deepest = max(deepest, self._depth(inner, depth + 1, seen) if inner else depth + 1)
                elif isinstance(selection, InlineFragmentNode):
                    deepest = max(deepest, self._depth(selection.selection_set, depth, seen))
                elif isinstance(selection, FragmentSpreadNode):
                    name = selection.name.value
                    fragment = self.fragments.get(name)
                    if fragment is not None and name not in seen:
                        deepest = max(deepest, self._depth(fragment.selection_set, depth, seen | {name}))
            return deepest

    return DepthLimit
