"""The deployment files stay true: the ConfigMap's policy file validates, the unit and the
Dockerfile say what the README promises."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from retention.config import load_config

from .conftest import REPO


def configmap_toml() -> str:
    text = (REPO / "deploy" / "kubernetes" / "retention.yaml").read_text(encoding="utf-8")
    block = text.split("config.toml: |\n", 1)[1].split("\n---", 1)[0]
    return textwrap.dedent(block)


def test_the_configmap_policy_file_is_valid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RETENTION_CONFIG", raising=False)
    path = tmp_path / "config.toml"
    path.write_text(configmap_toml(), encoding="utf-8")
    settings = load_config(path)
    assert settings.admin.listen == "0.0.0.0:8080"
    assert settings.store.url == "sqlite+aiosqlite:////data/retention.db"
    assert [p.name for p in settings.policies] == ["qa-chats"]
    assert settings.safety.dry_run is True, "it starts deleting nothing"


def test_manifests_have_one_replica_probes_secret_and_volume() -> None:
    text = (REPO / "deploy" / "kubernetes" / "retention.yaml").read_text(encoding="utf-8")
    for needle in (
        "replicas: 1",
        "path: /healthz",
        "path: /readyz",
        "secretKeyRef: {name: retention-tokens, key: customgpt-api-token}",
        "kind: PersistentVolumeClaim",
        "mountPath: /data",
    ):
        assert needle in text


def test_the_replicas_variant_runs_several_on_postgresql_with_every_secret_it_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import yaml

    text = (REPO / "deploy" / "kubernetes" / "retention-replicas.yaml").read_text(encoding="utf-8")
    objects = {o["kind"]: o for o in yaml.safe_load_all(text)}
    assert set(objects) == {"ConfigMap", "Deployment", "PodDisruptionBudget"}
    deployment = objects["Deployment"]["spec"]
    assert deployment["replicas"] > 1 and deployment["strategy"]["type"] == "RollingUpdate"
    assert "PersistentVolumeClaim" not in text, "no volume: the store is the database"
    container = deployment["template"]["spec"]["containers"][0]
    env = {e["name"]: e["valueFrom"]["secretKeyRef"]["key"] for e in container["env"]}
    # The config it mounts loads with exactly the env the Deployment gives it.
    config = tmp_path / "config.toml"
    config.write_text(objects["ConfigMap"]["data"]["config.toml"], encoding="utf-8")
    for name in env:
        monkeypatch.setenv(name, "postgresql+asyncpg://r@db/r" if "URL" in name else f"t-{name}")
    settings = load_config(config)
    assert settings.store.url.startswith("postgresql+asyncpg://")
    accounts = settings.account_list()
    assert len(accounts) > 1 and all(a.token is not None for a in accounts), "every token set"
    assert {a.token_source for a in accounts} == {f"env {n}" for n in env if "TOKEN" in n} - {
        "env RETENTION_ADMIN_TOKEN"
    }
    assert settings.admin_token is not None and settings.safety.dry_run is True


def test_systemd_unit_is_hardened_and_reloads_with_sighup() -> None:
    unit = (REPO / "deploy" / "retention.service").read_text(encoding="utf-8")
    for needle in (
        "DynamicUser=yes",
        "StateDirectory=retention",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ):
        assert needle in unit


def test_dockerfile_contract() -> None:
    dockerfile = (REPO / "Dockerfile").read_text(encoding="utf-8")
    for needle in (
        "ARG BASE_IMAGE=python:3.11-slim",
        "--require-hashes",
        "USER retention",
        'VOLUME ["/data"]',
        "COPY config.example.toml /usr/share/retention/config.example.toml",
        "RETENTION_CONFIG=/etc/retention/config.toml",  # the mount point, not a baked file
        'ENTRYPOINT ["retention"]',
        'CMD ["run"]',
        "STOPSIGNAL SIGTERM",
        "HEALTHCHECK --interval=30s",
        'CMD ["retention", "probe"]',
    ):
        assert needle in dockerfile
    # No live config is baked in: nothing is copied to where RETENTION_CONFIG points.
    assert not re.search(r"^COPY .* /etc/retention", dockerfile, re.M)
    # Dependencies are layered before the code.
    assert dockerfile.index("COPY requirements.lock") < dockerfile.index(
        "COPY retention /src/retention"
    )


def test_the_container_smoke_test_follows_the_image_layout() -> None:
    """The image has no config at /etc/retention: the smoke test checks the example where the
    image keeps it, expects `run` without a mount to exit 2, and mounts a config for the daemon."""
    script = (REPO / "scripts" / "container-smoke").read_text(encoding="utf-8")
    dockerfile = (REPO / "Dockerfile").read_text(encoding="utf-8")
    example = "/usr/share/retention/config.example.toml"
    assert f"COPY config.example.toml {example}" in dockerfile
    assert f"check --config {example}" in script
    assert "check --config /etc/retention/config.toml" not in script
    assert '"2:retention: error: /etc/retention/config.toml: file not found"' in script
    assert "init - >" in script
    assert script.count(":/etc/retention/config.toml:ro") == 2  # the starter, the daemon's


def test_the_systemd_notes_start_from_a_safe_starter() -> None:
    unit = (REPO / "deploy" / "retention.service").read_text(encoding="utf-8")
    assert "retention init /etc/retention/config.toml" in unit
    assert "config.example.toml /etc/retention/config.toml" not in unit
