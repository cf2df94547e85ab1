"""Links to the web UI's pages, which the CLI and the SDK print after they create something.

The base URL is ``Settings.resolved_ui_url()``; with none known, no link is
built (None) rather than a guessed one; docs/architecture.md, "Clients", says
who prints which. The page paths are the UI's routes. Reads and writes no subject.
"""

from __future__ import annotations

from flowbus.settings import Settings


def flow_url(settings: Settings, flow_id: str) -> str | None:
    """The page of one flow, or None when the UI's URL is unknown."""
    return _page(settings, "flow", flow_id)


def flow_run_url(settings: Settings, flow_run_id: str) -> str | None:
    """The page of one flow run, or None when the UI's URL is unknown."""
    return _page(settings, "flow-run", flow_run_id)


def _page(settings: Settings, kind: str, id_: str) -> str | None:
    base = settings.resolved_ui_url()
    return f"{base}/{kind}/{id_}" if base is not None else None
