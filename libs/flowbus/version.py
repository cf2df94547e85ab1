"""The flowbus version: written once, in pyproject.toml, and read here from the installed metadata."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("flowbus")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
