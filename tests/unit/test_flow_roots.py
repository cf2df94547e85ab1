"""Flow roots (flowbus.agent.flow_roots): which storage an agent with roots runs, checked without running it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from flowbus.agent.flow_roots import (
    OutsideFlowRoots,
    check_module,
    check_roots_exist,
    check_storage,
    module_files,
    resolve_roots,
)
from flowbus.agent.local import LocalAgent
from flowbus.agent.runner import FlowLoadError, load_flow
from flowbus.schemas.flows import StorageSpec
from flowbus.settings import Settings

# Writes a marker when it is executed: a refused script or module must not be.
MARKING = "open({marker!r}, 'w').write('ran')\n"


def script(path: Path) -> StorageSpec:
    return StorageSpec(type="script", path=str(path))


def test_no_roots_no_check(outside: Path) -> None:
    assert check_storage(script(outside / "anything.py"), []) is None
    assert check_storage(StorageSpec(type="module", module="no_such_module_anywhere"), []) is None


def test_a_script_inside_a_root_runs_by_its_real_path(root: Path, tmp_path: Path) -> None:
    (root / "flows").mkdir()
    (root / "flows" / "f.py").write_text("")
    roots = resolve_roots([root])
    assert check_storage(script(root / "flows" / "f.py"), roots) == os.path.realpath(root / "flows" / "f.py")
    # A root reached through a symlink counts where it points.
    (tmp_path / "link-to-root").symlink_to(root)
    assert check_storage(script(root / "flows" / "f.py"), resolve_roots([tmp_path / "link-to-root"]))


def test_scripts_leading_out_of_the_roots_are_refused(root: Path, outside: Path) -> None:
    (outside / "evil.py").write_text("")
    (root / "link.py").symlink_to(outside / "evil.py")
    (root / "dirlink").symlink_to(outside)
    (root / "sub").mkdir()
    roots = resolve_roots([root])
    for path in [
        outside / "evil.py",
        root / "link.py",
        root / "dirlink" / "evil.py",
        root / "sub" / ".." / ".." / "outside" / "evil.py",
    ]:
        with pytest.raises(OutsideFlowRoots, match="outside the flow roots; this agent runs only flows stored inside"):
            check_storage(script(path), roots)
    # A sibling whose name starts like the root is not inside it.
    (root.parent / "root-evil").mkdir()
    (root.parent / "root-evil" / "f.py").write_text("")
    with pytest.raises(OutsideFlowRoots):
        check_storage(script(root.parent / "root-evil" / "f.py"), roots)
    # A folder is not run (runpy would run its __main__.py).
    with pytest.raises(OutsideFlowRoots, match="not a file"):
        check_storage(script(root / "sub"), roots)


def test_load_flow_refuses_before_loading(root: Path, outside: Path) -> None:
    marker = outside / "marker"
    (outside / "evil.py").write_text(MARKING.format(marker=str(marker)))
    (root / "link.py").symlink_to(outside / "evil.py")
    for path in [outside / "evil.py", root / "link.py"]:
        with pytest.raises(FlowLoadError, match="outside the flow roots"):
            load_flow(script(path), "f", resolve_roots([root]))
    assert not marker.exists()


def _package(base: Path, marker: Path) -> None:
    """pkg/__init__.py (marks when run) and pkg/mod.py under ``base``."""
    (base / "pkg").mkdir()
    (base / "pkg" / "__init__.py").write_text(MARKING.format(marker=str(marker)))
    (base / "pkg" / "mod.py").write_text("")


def test_modules_are_located_without_running_them(root: Path, outside: Path) -> None:
    marker = outside / "marker"
    _package(root, marker)
    search = [str(root)]
    assert module_files("pkg.mod", search) == [
        str(root / "pkg" / "__init__.py"),
        str(root / "pkg" / "mod.py"),
    ]
    check_module("pkg.mod", resolve_roots([root]), search)
    assert not marker.exists()
    assert "pkg" not in sys.modules


def test_modules_outside_the_roots_are_refused(root: Path, outside: Path) -> None:
    marker = outside / "marker"
    _package(outside, marker)
    roots = resolve_roots([root])
    with pytest.raises(OutsideFlowRoots, match=r"is loaded from .*outside the flow roots"):
        check_module("pkg.mod", roots, [str(outside)])
    # A package inside whose __init__ is a symlink to a file outside: refused, since importing runs it.
    (root / "pkg").mkdir()
    (root / "pkg" / "__init__.py").symlink_to(outside / "pkg" / "__init__.py")
    (root / "pkg" / "mod.py").write_text("")
    with pytest.raises(OutsideFlowRoots, match="outside the flow roots"):
        check_module("pkg.mod", roots, [str(root)])
    with pytest.raises(OutsideFlowRoots, match="not found"):
        check_module("no_such_module_anywhere", roots, [str(root)])
    # An installed module (the standard library's) is outside any flow root.
    with pytest.raises(OutsideFlowRoots, match="outside the flow roots"):
        check_storage(StorageSpec(type="module", module="json.decoder"), roots)
    assert not marker.exists()


def test_roots_must_be_existing_folders(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is not an existing folder"):
        check_roots_exist([tmp_path / "missing"])
    with pytest.raises(ValueError, match="is not an existing folder"):
        LocalAgent(Settings(nats_url="nats://127.0.0.1:1"), flow_roots=[tmp_path / "missing"])


def test_roots_come_from_the_settings_unless_given(root: Path, outside: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWBUS_AGENT__FLOW_ROOTS", f'["{root}"]')
    settings = Settings(nats_url="nats://127.0.0.1:1")
    assert settings.agent.flow_roots == [root]
    assert LocalAgent(settings).flow_roots == [os.path.realpath(root)]
    assert LocalAgent(settings, flow_roots=[outside]).flow_roots == [os.path.realpath(outside)]
