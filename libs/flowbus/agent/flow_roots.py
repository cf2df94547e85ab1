"""Flow roots: the folders an agent runs flow code from, when it is given some.

A flow's storage names the code the agent will run (a script path or a
module name), and whoever may register flows chooses it. With roots
(``flowbus agent local start --flow-root DIR``, ``FLOWBUS_AGENT__FLOW_ROOTS``)
the agent runs a flow only when every file its storage would execute
resolves, symlinks and ``..`` followed, inside one of them; the agent checks
before it starts a process and the runner again before it loads anything
(docs/security.md, "The agent's host"). Without roots nothing is checked.

Touches no subjects.
"""

from __future__ import annotations

import importlib.machinery
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from flowbus.schemas.flows import StorageSpec


class OutsideFlowRoots(Exception):
    """The flow's storage is not inside the agent's flow roots: it is not run."""


def resolve_roots(roots: Iterable[str | Path]) -> list[str]:
    """The roots as real paths (a root that is a symlink counts where it points)."""
    return [os.path.realpath(os.path.expanduser(root)) for root in roots]


def check_roots_exist(roots: Iterable[str | Path]) -> None:
    """ValueError naming a root that is not an existing folder (a typo would refuse every run)."""
    for root in roots:
        if not os.path.isdir(os.path.expanduser(root)):
            raise ValueError(f"Flow root {str(root)!r} is not an existing folder.")


def _inside(path: str, roots: Sequence[str]) -> bool:
    for root in roots:
        try:
            if os.path.commonpath([path, root]) == root:
                return True
        except ValueError:  # another drive (Windows), or a relative root
            continue
    return False


def _rule(roots: Sequence[str]) -> str:
    return f"this agent runs only flows stored inside its flow roots ({', '.join(roots)})"


def checked_script(path: str, roots: Sequence[str]) -> str:
    """The real path of a script flow's file when it is a file inside a root."""
    resolved = os.path.realpath(path)
    if not _inside(resolved, roots):
        shown = path if resolved == path else f"{path} (resolved: {resolved})"
        raise OutsideFlowRoots(
            f"Refused to run the flow: its script {shown} is outside the flow roots; {_rule(roots)}."
        )
    # A missing file is left to the loader ("Flow script not found"); a folder
    # is not run, as runpy would run the __main__.py inside, which may lead out.
    if os.path.exists(resolved) and not os.path.isfile(resolved):
        raise OutsideFlowRoots(
            f"Refused to run the flow: its script {path} is not a file inside the flow roots; {_rule(roots)}."
        )
    return resolved


def module_files(module: str, search_path: Sequence[str] | None = None) -> list[str | None]:
    """The file each package on the way to ``module`` and the module itself
    would execute when imported (None: a namespace package, which runs
    nothing), found without importing anything.

    Not ``importlib.util.find_spec``: for a dotted name it imports the parent
    packages, running their code. Only the path finder is asked (sys.path, zip
    files included); a module it cannot place counts as not found.
    """
    files: list[str | None] = []
    locations: Sequence[str] | None = list(search_path if search_path is not None else sys.path)
    parts = module.split(".")
    for depth in range(1, len(parts) + 1):
        name = ".".join(parts[:depth])
        spec = importlib.machinery.PathFinder.find_spec(name, locations)
        if spec is None:
            raise OutsideFlowRoots(f"Refused to run the flow: its module {module!r} is not found on the path")
        files.append(spec.origin if spec.has_location else None)
        locations = spec.submodule_search_locations
        if locations is None and depth < len(parts):
            raise OutsideFlowRoots(f"Refused to run the flow: {name!r} is not a package, so {module!r} is not found")
    return files


def check_module(module: str, roots: Sequence[str], search_path: Sequence[str] | None = None) -> None:
    """OutsideFlowRoots unless every file importing ``module`` runs is inside a root."""
    try:
        files = module_files(module, search_path)
    except (ImportError, ValueError) as exc:
        raise OutsideFlowRoots(f"Refused to run the flow: its module {module!r} cannot be located: {exc}") from None
    except OutsideFlowRoots as exc:
        raise OutsideFlowRoots(f"{exc}; {_rule(roots)}.") from None
    for origin in files:
        if origin is None:
            continue
        resolved = os.path.realpath(origin)
        if not _inside(resolved, roots):
            raise OutsideFlowRoots(
                f"Refused to run the flow: its module {module!r} is loaded from {resolved}, "
                f"outside the flow roots; {_rule(roots)}."
            )


def check_storage(storage: StorageSpec, roots: Sequence[str]) -> str | None:
    """OutsideFlowRoots when ``storage`` may not run under ``roots`` (real
    paths, see ``resolve_roots``); for a script, its real path. No roots: no check."""
    if not roots:
        return None
    if storage.type == "script":
        assert storage.path is not None
        return checked_script(storage.path, roots)
    assert storage.module is not None
    check_module(storage.module, roots)
    return None
