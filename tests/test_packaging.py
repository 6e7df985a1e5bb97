"""The distribution's promises, checked without building anything: its metadata, the files the
wheel must carry, the locks the image installs from, and the image's labels and user.
`make wheel-smoke` and `make container-smoke` build the real things."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

import retention

REPO = Path(__file__).resolve().parent.parent
PYPROJECT: dict[str, Any] = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
PROJECT: dict[str, Any] = PYPROJECT["project"]
DOCKERFILE = (REPO / "Dockerfile").read_text(encoding="utf-8")


def pins(lock: str) -> dict[str, str]:
    """name -> version of every `name==version` line of a pip-compile lock, each with hashes."""
    text = (REPO / lock).read_text(encoding="utf-8")
    found = re.findall(
        r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+) \\\n(?=    --hash=sha256:)", text, re.M
    )
    assert found, f"{lock} pins nothing with hashes"
    return {canonicalize_name(name): version for name, version in found}


def assert_locked(requirements: list[str], lock: str) -> None:
    locked = pins(lock)
    for line in requirements:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{lock} lacks {requirement.name}: run `make lock`"
        assert requirement.specifier.contains(locked[name], prereleases=True), (
            f"{lock} pins {name}=={locked[name]}, outside {requirement}: run `make lock`"
        )


def test_the_distribution_has_its_own_name_and_installs_the_retention_command() -> None:
    # `retention` on PyPI is an unrelated project.
    assert PROJECT["name"] == "customgpt-retention"
    assert PROJECT["scripts"] == {"retention": "retention.cli:main"}
    assert PYPROJECT["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"] == ["retention"]


def test_the_metadata_is_complete() -> None:
    assert PROJECT["description"]
    assert PROJECT["readme"] == {"file": "README.md", "content-type": "text/markdown"}
    assert PROJECT["license"] == "Apache-2.0"
    assert PROJECT["license-files"] == ["LICENSE"]
    assert PROJECT["keywords"]
    assert PROJECT["authors"] == [{"name": "the retention authors"}]
    # PEP 639: an SPDX expression replaces the licence classifiers (a build refuses both).
    assert not [c for c in PROJECT["classifiers"] if c.startswith("License ::")]
    assert "Typing :: Typed" in PROJECT["classifiers"]


def test_the_python_classifiers_agree_with_requires_python() -> None:
    requires = SpecifierSet(PROJECT["requires-python"])
    prefix = "Programming Language :: Python :: "
    claimed = [
        c.removeprefix(prefix)
        for c in PROJECT["classifiers"]
        if re.fullmatch(r"\d+\.\d+", c.removeprefix(prefix))
    ]
    assert claimed, "no Programming Language :: Python :: 3.X classifier"
    assert all(requires.contains(f"{version}.0") for version in claimed), (requires, claimed)
    lowest = min(re.findall(r">=\s*(\d+\.\d+)", PROJECT["requires-python"]))
    assert lowest in claimed, f"requires-python allows {lowest}, no classifier claims it"
    assert PYPROJECT["tool"]["mypy"]["python_version"] == lowest
    assert PYPROJECT["tool"]["ruff"]["target-version"] == "py" + lowest.replace(".", "")


def test_the_licence_is_the_full_apache_2_text() -> None:
    text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License\n                           Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "9. Accepting Warranty or Additional Liability." in text
    assert "END OF TERMS AND CONDITIONS" in text
    assert "   Copyright 2026 the retention authors\n" in text


def test_the_wheel_carries_py_typed_the_example_config_and_the_migrations() -> None:
    """py.typed is inside the package (a wheel takes the package folder whole); the example
    config, its policy tests and Alembic's scripts live at the top of the repository and are
    mapped into it, and the sdist carries their sources so a wheel built from it carries them
    too."""
    assert (REPO / "retention" / "py.typed").is_file()
    targets = PYPROJECT["tool"]["hatch"]["build"]["targets"]
    assert targets["wheel"]["force-include"] == {
        "migrations": "retention/migrations",
        "config.example.toml": "retention/config.example.toml",
        "config.example.tests.toml": "retention/config.example.tests.toml",
    }
    sources = ("config.example.toml", "config.example.tests.toml", "migrations", "LICENSE")
    for source in (*sources, "README.md", "retention"):
        assert source in targets["sdist"]["include"]
    assert not (REPO / "retention" / "config.example.toml").exists(), (
        "one config.example.toml, at the top: the wheel maps it into the package"
    )


def test_the_runtime_lock_pins_every_dependency() -> None:
    """The image installs requirements.lock alone (no index): a dependency missing from it
    breaks the image, so a new one in pyproject.toml needs `make lock`."""
    assert_locked(PROJECT["dependencies"], "requirements.lock")
    assert_locked(PROJECT["optional-dependencies"]["postgres"], "requirements.lock")


def test_the_build_lock_pins_the_build_backend() -> None:
    assert_locked(PYPROJECT["build-system"]["requires"], "requirements-build.lock")
    assert "hatchling" in pins("requirements-build.lock")


@pytest.mark.parametrize(
    "needle",
    [
        "--require-hashes --no-deps -r /tmp/requirements-build.lock",
        "--require-hashes --no-deps -r /tmp/requirements.lock",
        "pip wheel --no-build-isolation --no-deps --no-index",
        "pip install --no-deps --no-index /tmp/dist/customgpt_retention-*.whl",
        "pip check",
        "USER 10001:10001\n",
        'org.opencontainers.image.title="retention"',
        'org.opencontainers.image.version="${VERSION}"',
        f'org.opencontainers.image.licenses="{PROJECT["license"]}"',
        f'org.opencontainers.image.description="{PROJECT["description"]}"',
    ],
)
def test_the_image_builds_from_the_locks_with_labels_and_a_numeric_user(needle: str) -> None:
    assert needle in DOCKERFILE


def test_the_images_version_label_is_the_packages_version() -> None:
    """The label's default must follow retention/__init__.py (the build also checks it)."""
    assert f"\nARG VERSION={retention.__version__}\n" in DOCKERFILE
