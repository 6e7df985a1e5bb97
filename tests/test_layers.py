"""The package's layers, as `make lint` checks them, and what a light command loads."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint_imports(source_root: Path, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(config), "--no-cache"],
        cwd=source_root,
        # Wide, so that rich does not wrap a contract's name across lines.
        env={"PYTHONPATH": str(source_root), "PATH": "/usr/bin:/bin", "COLUMNS": "250"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def package_copy(tmp_path: Path) -> Path:
    """A copy of the package to break on purpose, found before the installed one."""
    shutil.copytree(
        REPO / "retention", tmp_path / "retention", ignore=shutil.ignore_patterns("__pycache__")
    )
    return tmp_path


def test_the_layer_contracts_hold() -> None:
    result = _lint_imports(REPO, REPO / ".importlinter")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        # A cycle: the sweep context importing the engine that drives it.
        ("sweep.py", "from retention import engine as _cycle", "No import cycles"),
        # An arrow pointing up: the pure core reaching for the store.
        ("policy.py", "from retention import store as _up", "Layers"),
        # The pure core importing an I/O library.
        ("models.py", "import aiohttp as _io", "The pure core"),
        # A command building the store itself instead of asking the runtime.
        ("commands.py", "from retention.store import Store as _built", "Only the runtime"),
    ],
)
def test_a_broken_layer_fails_the_lint(
    package_copy: Path, module: str, line: str, broken: str
) -> None:
    target = package_copy / "retention" / module
    target.write_text(target.read_text(encoding="utf-8") + f"\n{line}  # noqa\n", encoding="utf-8")
    result = _lint_imports(package_copy, REPO / ".importlinter")
    assert result.returncode == 1, result.stdout + result.stderr
    broken_lines = [row for row in result.stdout.splitlines() if row.endswith("BROKEN")]
    assert any(broken in row for row in broken_lines), result.stdout


def _loaded_after(code: str, prefixes: tuple[str, ...]) -> str:
    probe = (
        f"import sys\n{code}\n"
        f"names = {prefixes!r}\n"
        "print('LOADED', sorted(m for m in sys.modules\n"
        "    if any(m == n or m.startswith(n + '.') for n in names)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_check_loads_neither_the_emulator_nor_the_daemon() -> None:
    config = str(REPO / "config.example.toml")
    out = _loaded_after(
        f"from retention.cli import main\nassert main(['check', '--config', {config!r}]) == 0",
        ("retention.emulator", "retention.demo", "apscheduler", "aiohttp.web"),
    )
    assert "LOADED []" in out, out


def test_the_python_api_loads_no_command_line_and_no_daemon() -> None:
    out = _loaded_after(
        "import retention.embed",
        ("retention.cli", "retention.commands", "retention.emulator", "apscheduler", "rich"),
    )
    assert "LOADED []" in out, out
