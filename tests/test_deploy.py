"""The deployment files work as written: the systemd unit and the Kubernetes overlays.

The unit passes ``systemd-analyze verify`` and keeps its hardening score; its install steps,
run under a temporary root, make files the service's unprivileged user can use, and the daemon
started as systemd would start it (tests/systemd_service.py) says READY, pings the watchdog and
says STOPPING. Every Kubernetes overlay renders (``kubectl kustomize``), every object validates
against the Kubernetes schemas (kubernetes-validate, strict), and each policy file loads with
the environment its workload gets.

``RETENTION_TESTS_DEPLOY`` (read at import; the tests' own environment is cleaned per test):
unset, a test whose tool is missing (``kubectl``, ``systemd-analyze``, ``setpriv``, root) skips
and says why; ``require`` (CI), it fails instead.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import shlex
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from retention.config import Settings, load_config
from retention.emulator import Emulator
from retention.runtime import preflight

from . import daemon_process
from .conftest import REPO
from .daemon_process import free_port, stop, wait_for
from .systemd_service import (
    INSTALLED,
    SERVICE_UID,
    UNIT,
    NotifySocket,
    install,
    install_steps,
    prepare_service,
    python_command,
    service_environment,
    service_settings,
    start_service,
    unprivileged,
)

SETTING = os.environ.get("RETENTION_TESTS_DEPLOY", "")
KUBERNETES = REPO / "deploy" / "kubernetes"
OVERLAYS = ("single-sqlite", "replicas-postgres", "cronjob-sqlite")
# The newest Kubernetes whose schemas kubernetes-validate carries, and an older one still run.
KUBE_VERSIONS = (kubernetes_validate.latest_version(), "1.30.0")
IMAGE_UID = 10001  # the Dockerfile's user and group
API_TOKEN = "sk-live-UNIT-SECRET-1234567890"
POLICY = """
[[policies]]
name = "test-chats"
agents = [532]
name_matches = ["Test*"]
max_age = "1h"
"""


def need(tool: str, why: str) -> str:
    found = shutil.which(tool)
    if found is None:
        unavailable(f"{tool} is not installed ({why})")
    assert found is not None
    return found


def unavailable(reason: str) -> None:
    if SETTING == "require":
        pytest.fail(f"{reason}, and RETENTION_TESTS_DEPLOY=require")
    pytest.skip(reason)


# ---- Kubernetes --------------------------------------------------------------------------------


@functools.cache
def _render(overlay: str) -> tuple[dict[str, Any], ...]:
    folder = KUBERNETES / "overlays" / overlay
    if shutil.which("kustomize"):
        command = ["kustomize", "build", str(folder)]
    else:  # kubectl carries kustomize (v5 since kubectl 1.27)
        command = [need("kubectl", "its kustomize renders the overlays"), "kustomize", str(folder)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return tuple(yaml.safe_load_all(done.stdout))


def render(overlay: str) -> list[dict[str, Any]]:
    return list(_render(overlay))


def objects(overlay: str) -> dict[str, dict[str, Any]]:
    """Each kind once: every overlay has one object of each kind."""
    rendered = render(overlay)
    kinds = [o["kind"] for o in rendered]
    assert len(kinds) == len(set(kinds)), kinds
    return {o["kind"]: o for o in rendered}


def pod_templates(overlay: str) -> list[dict[str, Any]]:
    """The pod template of every workload (Deployment, CronJob) the overlay renders."""
    templates = []
    for o in render(overlay):
        if o["kind"] == "Deployment":
            templates.append(o["spec"]["template"])
        elif o["kind"] == "CronJob":
            templates.append(o["spec"]["jobTemplate"]["spec"]["template"])
    assert templates, f"{overlay} runs nothing"
    return templates


def secret_keys_created(overlay: str) -> set[str]:
    """The Secret keys the overlay's install notes create (``--from-literal=KEY=...``)."""
    notes = (KUBERNETES / "overlays" / overlay / "kustomization.yaml").read_text(encoding="utf-8")
    return set(re.findall(r"--from-literal=([\w-]+)=", notes))


def image_env() -> dict[str, str]:
    """The Dockerfile's ENV: every container starts with it."""
    text = (REPO / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            for pair in shlex.split(line[4:]):
                key, _, value = pair.partition("=")
                if key != "PATH":
                    env[key] = value
    return env


def container_env(container: dict[str, Any], secrets: set[str]) -> dict[str, str]:
    """The environment the container gets: the image's, then its own, a stand-in for each
    Secret key (every key it reads must be one the install notes create)."""
    env = image_env()
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
            continue
        ref = item["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "retention-tokens", ref
        assert ref["key"] in secrets, f"{ref['key']} is not created by the install notes"
        stand_in = "postgresql+asyncpg://r@db/r" if ref["key"] == "store-url" else "t-" + ref["key"]
        env[item["name"]] = stand_in
    return env


def workload_settings(
    overlay: str, template: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """The overlay's policy file, loaded as the container loads it (its mount, its env)."""
    (container,) = template["spec"]["containers"]
    config_map = objects(overlay)["ConfigMap"]
    volume = next(v for v in template["spec"]["volumes"] if "configMap" in v)
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])
    env = container_env(container, secret_keys_created(overlay))
    assert env["RETENTION_CONFIG"] == f"{mount['mountPath']}/config.toml", "where the image looks"
    path = tmp_path / "config.toml"
    path.write_text(config_map["data"]["config.toml"], encoding="utf-8")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return load_config(path)


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_of_every_overlay_is_valid_kubernetes(overlay: str, version: str) -> None:
    problems = []
    for o in render(overlay):
        try:
            kubernetes_validate.validate(o, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            first = str(exc).splitlines()[0]
            problems.append(f"{o['kind']}/{o['metadata']['name']}: {first}")
    assert problems == []


def test_the_schema_check_can_fail() -> None:
    """Strict: a field Kubernetes does not know is an error, not ignored."""
    deployment = objects("single-sqlite")["Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    wrong = {**deployment, "spec": {**deployment["spec"], "template": {"spec": {
        "containers": [{**container, "readOnlyRootFileSystem": True}]}}}}  # fmt: skip
    with pytest.raises(kubernetes_validate.ValidationError, match="readOnlyRootFileSystem"):
        kubernetes_validate.validate(wrong, KUBE_VERSIONS[0], strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_workload_runs_locked_down_as_the_images_user(overlay: str) -> None:
    dockerfile = (REPO / "Dockerfile").read_text(encoding="utf-8")
    assert f"--uid {IMAGE_UID}" in dockerfile and f"--gid {IMAGE_UID}" in dockerfile
    rendered = render(overlay)
    names = {(o["kind"], o["metadata"]["name"]) for o in rendered}
    for template in pod_templates(overlay):
        pod = template["spec"]
        assert pod["automountServiceAccountToken"] is False
        assert pod["enableServiceLinks"] is False  # no RETENTION_SERVICE_* in its settings' env
        assert pod["securityContext"] == {
            "runAsNonRoot": True,
            "runAsUser": IMAGE_UID,
            "runAsGroup": IMAGE_UID,
            "fsGroup": IMAGE_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        }
        volumes = {v["name"]: v for v in pod["volumes"]}
        for volume in volumes.values():
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in names
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                assert ("PersistentVolumeClaim", claim) in names
        (container,) = pod["containers"]
        assert container["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        }
        assert container["resources"]["limits"]["memory"]
        assert container["resources"]["requests"]["cpu"]
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert {m["name"] for m in mounts.values()} <= set(volumes), "every mount has a volume"
        assert "emptyDir" in volumes[mounts["/tmp"]["name"]], "a writable /tmp"
        assert mounts["/etc/retention"]["readOnly"] is True
        ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            if probe in container:
                assert container[probe]["httpGet"]["port"] in ports


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_network_policy_lets_in_only_the_admin_port_and_out_only_what_it_calls(
    overlay: str,
) -> None:
    found = objects(overlay)
    policy = found["NetworkPolicy"]["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    for template in pod_templates(overlay):
        labels = template["metadata"]["labels"]
        assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    egress = {(p["protocol"], p["port"]) for rule in policy["egress"] for p in rule["ports"]}
    assert all("to" not in rule for rule in policy["egress"])
    expected = {("UDP", 53), ("TCP", 53), ("TCP", 443)}  # DNS, the CustomGPT API
    if overlay == "replicas-postgres":
        expected.add(("TCP", 5432))
    assert egress == expected
    ingress = {
        (p["protocol"], p["port"]) for rule in policy.get("ingress", []) for p in rule["ports"]
    }
    if "Deployment" in found:
        (container,) = found["Deployment"]["spec"]["template"]["spec"]["containers"]
        admin = {p["name"]: p["containerPort"] for p in container["ports"]}["admin"]
        assert ingress == {("TCP", admin)}
        service = found["Service"]["spec"]
        labels = found["Deployment"]["spec"]["template"]["metadata"]["labels"]
        assert service["selector"].items() <= labels.items()
        assert [(p["port"], p["targetPort"]) for p in service["ports"]] == [(admin, "admin")]
    else:
        assert ingress == set(), "nothing listens in a run of `once`: nothing comes in"


def test_single_sqlite_runs_one_writer_on_a_volume_with_a_policy_file_that_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    found = objects("single-sqlite")
    assert set(found) == {
        "ConfigMap", "Service", "PersistentVolumeClaim", "Deployment", "NetworkPolicy",
    }  # fmt: skip
    spec = found["Deployment"]["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}, "one writer"
    (template,) = pod_templates("single-sqlite")
    (container,) = template["spec"]["containers"]
    assert container["args"] == ["run"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in template["spec"]["volumes"]}
    assert volumes[mounts["/data"]]["persistentVolumeClaim"]["claimName"] == "retention-data"
    settings = workload_settings("single-sqlite", template, tmp_path, monkeypatch)
    assert settings.store.url == "sqlite+aiosqlite:////data/retention.db", "on the volume"
    assert settings.admin.listen == "0.0.0.0:8080"
    assert [p.name for p in settings.policies] == ["qa-chats"]
    assert settings.safety.dry_run is True, "it starts deleting nothing"
    assert settings.account_list()[0].token is not None
    preflight(settings)  # what `run` checks before it starts: the admin token is there


def test_replicas_postgres_runs_several_on_the_database_with_every_secret_it_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    found = objects("replicas-postgres")
    assert set(found) == {
        "ConfigMap", "Service", "Deployment", "PodDisruptionBudget", "NetworkPolicy",
    }  # fmt: skip
    spec = found["Deployment"]["spec"]
    assert spec["replicas"] > 1 and spec["strategy"]["type"] == "RollingUpdate"
    (template,) = pod_templates("replicas-postgres")
    assert "persistentVolumeClaim" not in str(template), "no volume: the store is the database"
    selector = found["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"]
    assert selector.items() <= template["metadata"]["labels"].items()
    settings = workload_settings("replicas-postgres", template, tmp_path, monkeypatch)
    assert settings.store.url.startswith("postgresql+asyncpg://")
    accounts = settings.account_list()
    assert len(accounts) > 1 and all(a.token is not None for a in accounts), "every token set"
    assert settings.admin_token is not None and settings.safety.dry_run is True
    preflight(settings)  # the lease outlasts the request timeout twice, the admin token is there


def test_the_cronjob_runs_once_at_a_time_on_the_single_sqlite_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    found = objects("cronjob-sqlite")
    assert set(found) == {"ConfigMap", "PersistentVolumeClaim", "CronJob", "NetworkPolicy"}
    assert found["ConfigMap"] == objects("single-sqlite")["ConfigMap"], "the same policy file"
    cron = found["CronJob"]["spec"]
    assert cron["concurrencyPolicy"] == "Forbid", "one writer on the store"
    job = cron["jobTemplate"]["spec"]
    assert job["template"]["spec"]["restartPolicy"] == "Never" and job["backoffLimit"] == 0
    (template,) = pod_templates("cronjob-sqlite")
    (container,) = template["spec"]["containers"]
    assert container["args"] == ["once"]
    assert {m["mountPath"] for m in container["volumeMounts"]} == {
        "/etc/retention",
        "/data",
        "/tmp",
    }
    settings = workload_settings("cronjob-sqlite", template, tmp_path, monkeypatch)
    assert settings.store.url == "sqlite+aiosqlite:////data/retention.db"
    assert not settings.admin.listen and settings.admin_token is None, "serves nothing"
    preflight(settings)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_install_notes_create_every_secret_key_the_workloads_read(overlay: str) -> None:
    read = {
        e["valueFrom"]["secretKeyRef"]["key"]
        for template in pod_templates(overlay)
        for e in template["spec"]["containers"][0].get("env", [])
        if "valueFrom" in e
    }
    assert read == secret_keys_created(overlay)


def test_no_flat_manifest_is_left_beside_the_overlays() -> None:
    """One source of truth: the overlays (the old flat files would drift from them)."""
    assert sorted(p.name for p in KUBERNETES.iterdir()) == ["base", "overlays"]
    assert sorted(p.name for p in (KUBERNETES / "overlays").iterdir()) == sorted(OVERLAYS)


# ---- systemd -----------------------------------------------------------------------------------


def test_the_unit_says_what_the_readme_promises() -> None:
    service = service_settings()
    expected = {
        "Type": ["notify"],
        "NotifyAccess": ["main"],
        "ExecStart": [f"{INSTALLED} run --config /etc/retention/config.toml"],
        "ExecReload": ["/bin/kill -HUP $MAINPID"],
        "DynamicUser": ["yes"],
        "StateDirectory": ["retention"],
        "StateDirectoryMode": ["0700"],
        "LoadCredential": ["customgpt-token:/etc/retention/customgpt-token"],
        "ProtectSystem": ["strict"],
        "NoNewPrivileges": ["yes"],
        "Restart": ["on-failure"],
    }
    assert {key: service.get(key) for key in expected} == expected
    assert "RETENTION_API__TOKEN_FILE=%d/customgpt-token" in service["Environment"]
    (watchdog,) = service["WatchdogSec"]
    assert watchdog.endswith("s") and int(watchdog[:-1]) >= 30


def test_the_install_notes_use_a_venv_and_start_from_a_safe_starter() -> None:
    steps = install_steps()
    assert steps[:2] == [
        "apt-get install python3-venv",
        "python3 -m venv /opt/retention && /opt/retention/bin/pip install customgpt-retention",
    ], "Debian 12 refuses a system-wide pip install"
    assert f"{INSTALLED} init - | install -m 0644 /dev/stdin /etc/retention/config.toml" in steps
    assert "install -d -m 0755 /etc/retention" in steps
    assert any(
        s.endswith("install -m 0600 /dev/stdin /etc/retention/customgpt-token") for s in steps
    )
    assert steps[-1] == "systemctl daemon-reload && systemctl enable --now retention"
    assert "config.example.toml /etc/retention/config.toml" not in UNIT.read_text(encoding="utf-8")


def systemd_root(tmp_path: Path, unit: str) -> Path:
    """A root for ``systemd-analyze --root``: the unit where the notes install it, a stand-in
    for the installed command, /bin/kill, and the host's own units (its targets, for the
    dependencies): what a Debian 12 host with the package installed has."""
    root = tmp_path / "root"
    units = root / "etc" / "systemd" / "system"
    units.mkdir(parents=True)
    (units / "retention.service").write_text(unit, encoding="utf-8")
    command = root / INSTALLED.lstrip("/")
    command.parent.mkdir(parents=True)
    command.write_text("#!/bin/sh\n", encoding="utf-8")
    command.chmod(0o755)
    (root / "bin").mkdir()
    shutil.copy2(need("kill", "the unit's ExecReload"), root / "bin" / "kill")
    host_units = next(
        p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir()
    )
    shutil.copytree(host_units, root / "usr" / "lib" / "systemd" / "system", symlinks=True)
    return root


def analyze_verify(tmp_path: Path, unit: str) -> str:
    analyze = need("systemd-analyze", "apt-get install systemd")
    root = systemd_root(tmp_path, unit)
    done = subprocess.run(
        [analyze, "verify", f"--root={root}", "retention.service"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return f"exit {done.returncode}: {done.stdout}{done.stderr}".strip()


def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """Every key known, every value parsed, the commands present and executable, the units it
    orders itself after present: systemd-analyze says nothing at all (it only warns, exit 0, of
    an unknown key or a value it cannot parse: any output fails the test)."""
    assert analyze_verify(tmp_path, UNIT.read_text(encoding="utf-8")) == "exit 0:"


def test_systemd_analyze_verify_can_fail(tmp_path: Path) -> None:
    broken = UNIT.read_text(encoding="utf-8").replace("WatchdogSec=60s", "WatchdogSec=a minute")
    assert "Failed to parse" in analyze_verify(tmp_path, broken)


def test_the_hardening_score_does_not_get_worse() -> None:
    """``systemd-analyze security`` (lower is better): 1.6 with Type=exec, 1.4 since
    ProtectProc=invisible came with Type=notify."""
    analyze = need("systemd-analyze", "apt-get install systemd")
    done = subprocess.run(
        [analyze, "security", "--offline=yes", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = re.search(r"Overall exposure level for retention\.service: ([\d.]+)", done.stdout)
    assert found is not None, done.stdout + done.stderr
    assert float(found[1]) <= 1.4


@pytest.fixture
def service_root() -> Iterator[Path]:
    """A root the service's uid can walk (pytest's tmp_path is root's alone), as / is."""
    if os.geteuid() != 0:
        unavailable("the service runs as another uid: the test must start as root")
    need("setpriv", "util-linux: the service's unprivileged uid")
    python = python_command()[0]
    probe = subprocess.run(
        [*unprivileged(), python, "-c", "import retention"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        unavailable(f"uid {SERVICE_UID} cannot import retention with {python}: {probe.stderr}")
    root = Path(tempfile.mkdtemp(prefix="retention-unit-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root)


def owner_and_mode(path: Path) -> tuple[int, int, str]:
    st = path.stat()
    return st.st_uid, st.st_gid, f"{stat.S_IMODE(st.st_mode):04o}"


async def test_the_service_starts_as_its_dynamic_user_says_ready_pings_and_stops(
    service_root: Path, emulator: Emulator
) -> None:
    emulator.token = API_TOKEN
    installed = install(service_root, token=API_TOKEN)
    assert len(installed.ran) == 4, installed.ran  # the unit, the folder, the config, the token
    etc = installed.path("/etc/retention")
    assert owner_and_mode(etc) == (0, 0, "0755")
    assert owner_and_mode(etc / "config.toml") == (0, 0, "0644")
    assert owner_and_mode(etc / "customgpt-token") == (0, 0, "0600")
    with (etc / "config.toml").open("a", encoding="utf-8") as config:  # "write your policies"
        config.write(POLICY)
    assert owner_and_mode(etc / "config.toml") == (0, 0, "0644")
    state, credentials = prepare_service(installed)
    notify = NotifySocket(installed.path("/run/systemd/notify"))
    admin = f"127.0.0.1:{free_port()}"
    watchdog_usec = 2_000_000  # a ping every second (the unit's 60 s would make a slow test)
    try:
        async with emulator.serve() as url:
            env = service_environment(
                installed, credentials, notify.path, watchdog_usec=watchdog_usec
            )
            # A drop-in's overrides: the emulator instead of CustomGPT, a free admin port.
            env |= {"RETENTION_API__BASE_URL": url, "RETENTION_ADMIN__LISTEN": admin}
            process = await start_service(installed, env=env)
            daemon_process.STARTED.append(process)  # killed after the test whatever happens
            try:
                await notify.wait_for("READY", within=30)
                # READY comes once the admin surface listens: it answers at once.
                async with (
                    aiohttp.ClientSession() as http,
                    http.get(f"http://{admin}/healthz") as r,
                ):
                    assert r.status == 200
                assert os.stat(f"/proc/{process.pid}").st_uid == SERVICE_UID, "not root"
                await notify.wait_for("WATCHDOG", count=3, within=10)
                # The token, read from the credential, was the one the API accepted.
                await wait_for(lambda: bool(emulator.calls("GET", "*/projects/532/*")))
                assert {c.status for c in emulator.calls()} == {200}
            finally:
                code, output = await stop(process)
    finally:
        notify.close()
    assert code == 0, output[-3000:]
    (ready,) = notify.having("READY")
    assert ready.fields["STATUS"].startswith("running: discovery every 15m"), ready.fields
    (stopping,) = notify.having("STOPPING")
    assert stopping.at > ready.at
    pings = [m.at for m in notify.having("WATCHDOG")]
    gaps = [b - a for a, b in zip([ready.at, *pings], pings, strict=False)]
    assert max(gaps) < watchdog_usec / 1e6, f"a gap reached the watchdog's timeout: {gaps}"
    # NotifyAccess=main: every message came from the main process, as the service's user.
    assert {(m.pid, m.uid) for m in notify.messages} == {(process.pid, SERVICE_UID)}
    assert owner_and_mode(state) == (SERVICE_UID, SERVICE_UID, "0700")
    assert owner_and_mode(state / "retention.db") == (SERVICE_UID, SERVICE_UID, "0600")
    assert API_TOKEN not in output


async def test_a_config_the_service_user_cannot_read_exits_2_naming_it(
    service_root: Path,
) -> None:
    """Why the config is 0644: at 0600 (root's umask 077, say) the service's user cannot read
    it, and `run` exits 2 (a restart loop under Restart=on-failure)."""
    installed = install(service_root, token=API_TOKEN)
    config = installed.path("/etc/retention/config.toml")
    config.chmod(0o600)
    _state, credentials = prepare_service(installed)
    env = service_environment(installed, credentials, None, watchdog_usec=None)
    process = await start_service(installed, env=env)
    daemon_process.STARTED.append(process)
    _out, err = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 2
    assert f"{config}: cannot read: Permission denied" in err.decode()


# ---- the container image -----------------------------------------------------------------------


def test_dockerfile_contract() -> None:
    dockerfile = (REPO / "Dockerfile").read_text(encoding="utf-8")
    for needle in (
        "ARG BASE_IMAGE=python:3.11-slim",
        "--require-hashes",
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
    # The user the Kubernetes manifests run as (runAsUser, runAsGroup), by name or by number.
    assert re.search(rf"^USER (retention|{IMAGE_UID}(:{IMAGE_UID})?)$", dockerfile, re.M)
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


def test_ci_says_in_one_line_how_to_get_podman_when_it_cannot_install_it(tmp_path: Path) -> None:
    """`.ci/run` on a machine without podman, where apt cannot install it (no root, no index):
    one line naming the package and the command, exit 1, apt's own words kept in a log."""
    script = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    block = script[
        script.index("# The container smoke test builds") : script.index('echo "== lint"')
    ]
    tools = tmp_path / "bin"  # a PATH without podman, with an apt-get that fails as apt does
    tools.mkdir()
    (tools / "apt-get").write_text(
        '#!/bin/sh\necho "E: Unable to locate package podman" >&2\nexit 100\n', encoding="utf-8"
    )
    (tools / "apt-get").chmod(0o755)
    done = subprocess.run(
        ["/bin/bash", "-euo", "pipefail", "-c", block + "\necho reached\n"],
        env={"PATH": str(tools), "TMPDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1 and "reached" not in done.stdout
    (line,) = done.stderr.splitlines()
    assert line.startswith(".ci/run: the container smoke test needs podman")
    assert "apt-get install podman runc debootstrap" in line
    assert "Unable to locate package" in (tmp_path / "retention-ci-podman.log").read_text()
