"""The deployment files stay true: the ConfigMap's policy file validates, the unit and the
Dockerfile say what the README promises."""

from __future__ import annotations

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
        "COPY config.example.toml /etc/retention/config.toml",
        'ENTRYPOINT ["retention"]',
        'CMD ["run"]',
        "STOPSIGNAL SIGTERM",
        "HEALTHCHECK --interval=30s",
        'CMD ["retention", "probe"]',
    ):
        assert needle in dockerfile
    # Dependencies are layered before the code.
    assert dockerfile.index("COPY requirements.lock") < dockerfile.index(
        "COPY retention /src/retention"
    )
