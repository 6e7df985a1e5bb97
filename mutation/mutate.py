"""Mutation testing of the pure core with mutmut: ``make mutate``.

Each module is mutated in a copy of the repository made for it alone (the work tree is never
touched), and every mutant runs only that module's own test file (mutmut narrows it further to
the tests that reach the mutated function). Prints the score per module, and fails when a
mutant survives that ``mutation/equivalent.toml`` does not list with the reason it is
equivalent to the original.

mutmut 3 mutates the bodies of functions and methods; module-level constants and functions
under a decorator such as ``@property`` are not mutated by it.

Usage: python mutation/mutate.py [policy] [timefmt] [budget] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EQUIVALENT = REPO / "mutation" / "equivalent.toml"
MODULES = {
    "policy": "tests/test_policy.py",
    "timefmt": "tests/test_timefmt.py",
    "budget": "tests/test_budget.py",
}
# A test of these modules takes a second at most; one that runs 5 s under a mutant has hung (and
# the mutant counts as killed). Without this, pytest-timeout's 60 s would make each hang cost a
# minute.
TEST_TIMEOUT = 5
KILLED = {1, 3}  # a test failed (3: pytest's internal error, as mutmut counts it)
TIMEOUT = {36, 24, -24, 152, 255}  # the mutant hung; mutmut counts it as killed
STATUS = {0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", 37: "type check"}


@dataclass(frozen=True)
class Mutant:
    key: str
    function: str
    removed: str
    added: str
    diff: str


@dataclass
class Outcome:
    module: str
    total: int = 0
    killed: int = 0
    explained: list[Mutant] = field(default_factory=list)
    unexplained: list[tuple[Mutant, str]] = field(default_factory=list)
    stale: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0


def say(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def mutmut_config(module: str) -> str:
    return f"""
[tool.mutmut]
source_paths = ["retention"]
only_mutate = ["retention/{module}.py"]
pytest_add_cli_args_test_selection = ["{MODULES[module]}"]
pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "--timeout={TEST_TIMEOUT}"]
use_git_change_detection = false
"""


def make_copy(module: str, into: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis")
    shutil.copytree(REPO / "retention", into / "retention", ignore=ignore)
    shutil.copytree(REPO / "tests", into / "tests", ignore=ignore)
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    (into / "pyproject.toml").write_text(pyproject + mutmut_config(module), encoding="utf-8")


def mutmut(*args: str, cwd: Path, log: Path | None = None) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).parent / "mutmut"), *args]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    if log is None:
        return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    with log.open("w", encoding="utf-8") as out:
        return subprocess.run(
            command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, text=True
        )


def function_of(key: str, module: str) -> str:
    """``retention.budget.xǁLanesǁrelease__mutmut_3`` -> ``Lanes.release``."""
    name = key.removeprefix(f"retention.{module}.").rsplit("__mutmut_", 1)[0]
    if name.startswith("xǁ"):
        return ".".join(part for part in name[2:].split("ǁ") if part)
    return name.removeprefix("x_")


def changed_lines(diff: str, sign: str) -> str:
    lines = diff.splitlines()
    return "\n".join(
        line[1:].strip()
        for line in lines
        if line.startswith(sign) and not line.startswith(sign * 3) and line[1:].strip()
    )


def read_mutant(key: str, module: str, cwd: Path) -> Mutant:
    shown = mutmut("show", key, cwd=cwd).stdout
    diff = "\n".join(line for line in shown.splitlines() if not line.startswith("# "))
    return Mutant(
        key=key,
        function=function_of(key, module),
        removed=changed_lines(diff, "-"),
        added=changed_lines(diff, "+"),
        diff=diff,
    )


def listed(equivalents: list[dict[str, str]], mutant: Mutant) -> dict[str, str] | None:
    for entry in equivalents:
        if (
            entry["function"] == mutant.function
            and entry["removed"].strip() == mutant.removed
            and entry["added"].strip() == mutant.added
        ):
            return entry
    return None


def run_module(module: str, equivalents: list[dict[str, str]], keep: bool) -> Outcome:
    outcome = Outcome(module)
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix=f"mutate-{module}-"))
    try:
        make_copy(module, work)
        log = work / "mutmut.log"
        result = mutmut("run", cwd=work, log=log)
        meta = work / "mutants" / "retention" / f"{module}.py.meta"
        if result.returncode != 0 or not meta.exists():
            tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
            raise SystemExit(f"mutmut failed on {module}.py (exit {result.returncode}):\n{tail}")
        codes: dict[str, int | None] = json.loads(meta.read_text(encoding="utf-8"))[
            "exit_code_by_key"
        ]
        used: list[dict[str, str]] = []
        for key, code in sorted(codes.items()):
            outcome.total += 1
            if code in KILLED or code in TIMEOUT:
                outcome.killed += 1
                continue
            mutant = read_mutant(key, module, work)
            entry = listed(equivalents, mutant)
            if code == 0 and entry is not None:
                outcome.explained.append(mutant)
                used.append(entry)
            else:
                status = STATUS.get(code, f"exit {code}") if code is not None else "not run"
                outcome.unexplained.append((mutant, status))
        outcome.stale = [e for e in equivalents if e not in used]
    finally:
        if keep:
            say(f"  (kept {work})")
        else:
            shutil.rmtree(work, ignore_errors=True)
    outcome.seconds = time.monotonic() - started
    return outcome


def report(outcome: Outcome) -> None:
    total, killed = outcome.total, outcome.killed
    equivalent = len(outcome.explained)
    score = 100.0 * killed / total if total else 100.0
    real = total - equivalent
    of_real = 100.0 * killed / real if real else 100.0
    say(
        f"{outcome.module}.py: {total} mutants, {killed} killed ({score:.1f}%), "
        f"{equivalent} equivalent (listed), {len(outcome.unexplained)} unexplained; "
        f"{of_real:.1f}% of the non-equivalent killed; {outcome.seconds:.0f}s"
    )
    for mutant, status in outcome.unexplained:
        say(f"  {status}: {mutant.key} in {mutant.function}")
        for line in mutant.diff.splitlines()[2:]:
            say(f"    {line}")
    for entry in outcome.stale:
        say(f"  note: listed as equivalent but not among the survivors: {entry['function']}: ")
        say(f"    - {entry['removed']}")
        say(f"    + {entry['added']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help=f"any of {', '.join(MODULES)} (default: all)")
    parser.add_argument("--keep", action="store_true", help="keep each module's copy")
    args = parser.parse_args()
    unknown = sorted(set(args.modules) - set(MODULES))
    if unknown:
        parser.error(f"unknown module(s): {', '.join(unknown)}; choose from {', '.join(MODULES)}")
    listing = tomllib.loads(EQUIVALENT.read_text(encoding="utf-8"))
    started = time.monotonic()
    outcomes = []
    for module in args.modules or list(MODULES):
        say(f"mutating retention/{module}.py against {MODULES[module]} ...")
        outcome = run_module(module, listing.get(module, []), args.keep)
        report(outcome)
        outcomes.append(outcome)
    unexplained = sum(len(o.unexplained) for o in outcomes)
    say()
    say(f"mutation score per module ({time.monotonic() - started:.0f}s in all):")
    for o in outcomes:
        say(f"  {o.module + '.py':12} {100.0 * o.killed / o.total if o.total else 100.0:5.1f}%")
    if unexplained:
        say(f"{unexplained} unexplained surviving mutant(s): kill them with a test, or list them")
        say(f"in {EQUIVALENT.relative_to(REPO)} with the reason each is equivalent.")
        return 1
    say("no unexplained survivors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
