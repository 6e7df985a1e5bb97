"""``retention completion bash|zsh``: the script shtab writes, loaded into a real bash."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from retention.cli import main

BASH = shutil.which("bash")


def _script(shell: str, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["completion", shell]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    return out


def _complete(script: Path, *words: str) -> list[str]:
    """What bash offers for the last of ``words`` after loading ``script``, as a shell would."""
    assert BASH is not None
    line = " ".join(words)
    text = script.read_text(encoding="utf-8")
    match = re.search(r"complete .*-F (\S+) retention", text)
    assert match is not None, "the script registers a function for `retention`"
    words_array = " ".join(f"'{w}'" for w in words)
    probe = (
        f"source {script}\n"
        f"COMP_WORDS=({words_array}); COMP_CWORD={len(words) - 1}\n"
        f"COMP_LINE='{line}'; COMP_POINT=${{#COMP_LINE}}\n"
        f"{match.group(1)} retention '{words[-1]}' '{words[-2]}'\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    done = subprocess.run(
        [BASH, "--norc", "--noprofile", "-c", probe],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [w.strip() for w in done.stdout.splitlines() if w.strip()]


@pytest.mark.skipif(BASH is None, reason="bash is not installed")
def test_bash_completion_offers_commands_actions_and_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = tmp_path / "retention.bash"
    script.write_text(_script("bash", capsys), encoding="utf-8")
    assert _complete(script, "retention", "pl") == ["plan"]
    assert set(_complete(script, "retention", "")) >= {
        "plan",
        "once",
        "status",
        "audit",
        "report",
        "completion",
    }
    assert _complete(script, "retention", "audit", "ve") == ["verify"]
    assert _complete(script, "retention", "completion", "") == ["bash", "zsh"]
    assert "--config" in _complete(script, "retention", "plan", "--con")
    assert "--config" in _complete(script, "retention", "--con")


def test_zsh_completion_is_a_compdef_script_of_every_command(
    capsys: pytest.CaptureFixture[str],
) -> None:
    script = _script("zsh", capsys)
    assert script.startswith("#compdef retention")
    for command in ("plan", "once", "status", "audit", "report", "completion"):
        assert re.search(rf"^\s+{command}:'", script, re.MULTILINE), command
    # Each command is described by its one-line help, not its --help paragraph.
    assert "plan:'discover and show what is due, when and by which rule; deletes nothing'" in script
    zsh = shutil.which("zsh")
    if zsh is not None:
        done = subprocess.run([zsh, "-n"], input=script, text=True, capture_output=True)
        assert done.returncode == 0, done.stderr


def test_an_unknown_shell_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["completion", "fish"])
    assert caught.value.code == 2
    assert "invalid choice: 'fish'" in capsys.readouterr().err


def test_completion_prints_to_stdout_from_a_real_process() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "retention", "completion", "bash"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0 and done.stderr == ""
    assert "retention" in done.stdout and "complete " in done.stdout
