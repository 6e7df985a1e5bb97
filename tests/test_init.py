"""Safe by default: `retention init` writes a starter that deletes nothing, and a missing config
is an error that says where one goes."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from retention.cli import main
from retention.config import load_config
from retention.housekeeping import example_config

REPO = Path(__file__).resolve().parent.parent


def test_init_writes_a_starter_that_passes_check_and_deletes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["init"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("wrote retention.toml: a starter config that deletes nothing")
    assert "retention check --config retention.toml" in out
    assert "retention db upgrade --config retention.toml" in out
    settings = load_config(tmp_path / "retention.toml")
    assert settings.safety.dry_run is True
    assert settings.policies == [] and settings.holds == []
    assert settings.api.base_url == "https://app.customgpt.ai/api/v1/"
    assert main(["check", "--config", "retention.toml"]) == 0
    assert "dry_run    true" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == ["retention.toml"], "no store yet"


def test_init_names_the_documented_example_where_it_is_installed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """From a wheel there is no repository to find config.example.toml in: init names the copy
    that comes with the package (a checkout's own, here), and it is the documented file."""
    path = tmp_path / "retention.toml"
    assert main(["init", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"every key is documented, with its default, in\n     {example_config()}\n" in out
    assert example_config().is_absolute()
    assert example_config().read_bytes() == (REPO / "config.example.toml").read_bytes()
    assert "config.example.toml, which comes with the package" in path.read_text(encoding="utf-8")


def test_the_starters_commented_policy_and_hold_are_valid_once_uncommented(
    tmp_path: Path,
) -> None:
    path = tmp_path / "retention.toml"
    assert main(["init", str(path)]) == 0
    text = path.read_text(encoding="utf-8")
    assert re.search(r"^\[\[policies\]\]", text, re.M) is None, "no live policy"
    head, rules = text.split("# Policies:", 1)
    uncommented = re.sub(r"^# (\[\[(policies|holds)\]\]|\w+ = )", r"\1", rules, flags=re.M)
    path.write_text(head + "# Policies:" + uncommented, encoding="utf-8")
    settings = load_config(path)
    assert [p.name for p in settings.policies] == ["qa-chats"]
    assert [h.name for h in settings.holds] == ["legal"]
    assert settings.safety.dry_run is True


def test_init_never_overwrites(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "mine.toml"
    path.write_text("# my config\n", encoding="utf-8")
    assert main(["init", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"retention: error: {path}: exists already: init never overwrites a file; "
        "name another PATH\n"
    )
    assert path.read_text(encoding="utf-8") == "# my config\n"


def test_init_makes_the_folder_and_dash_writes_only_toml_to_stdout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["init", str(tmp_path / "etc" / "retention" / "config.toml")]) == 0
    assert (tmp_path / "etc" / "retention" / "config.toml").is_file()
    capsys.readouterr()
    assert main(["init", "-"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out == (tmp_path / "etc" / "retention" / "config.toml").read_text(encoding="utf-8")
    (tmp_path / "piped.toml").write_text(out, encoding="utf-8")
    assert load_config(tmp_path / "piped.toml").safety.dry_run is True


def test_run_without_a_mounted_config_says_where_to_mount_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The container: RETENTION_CONFIG names the mount point, and nothing is mounted there."""
    missing = tmp_path / "etc" / "retention" / "config.toml"
    monkeypatch.setenv("RETENTION_CONFIG", str(missing))
    assert main(["run"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith(
        f"retention: error: {missing}: file not found (env RETENTION_CONFIG names it): "
        f"mount your config file at this path, e.g. `docker run -v $PWD/retention.toml:{missing}:ro"
    )
    assert "Kubernetes ConfigMap" in err and "`retention init FILE`" in err
    assert not (tmp_path / "etc").exists()


def test_a_missing_config_named_on_the_command_line_points_at_init(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.toml"
    assert main(["run", "--config", str(missing)]) == 2
    assert capsys.readouterr().err == (
        f"retention: error: {missing}: file not found; `retention init {missing}` writes a safe "
        "starter config there\n"
    )


def test_no_config_at_all_points_at_init(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run"]) == 2
    assert "`retention init FILE` writes a safe starter config" in capsys.readouterr().err
