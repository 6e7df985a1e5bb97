"""Play systemd for deploy/retention.service, without systemd: its install steps, its user.

The unit's own notes are the install steps: :func:`install` runs the ones that write files
(the unit, ``/etc/retention``, the config, the token file), as written there, under a temporary
root instead of ``/``. :func:`start_service` then does what systemd does for the unit before
it runs ``ExecStart``, as far as the daemon can tell: the state directory (``StateDirectory=``,
``StateDirectoryMode=``), the credentials (``LoadCredential=``: each a 0400 file in a 0500
folder, both owned by the service's uid, as systemd makes them on a file system without ACLs),
its ``Environment=``, ``WorkingDirectory=``, ``UMask=``, ``NoNewPrivileges=``, and a uid of no
user, which owns nothing in ``/etc`` (``DynamicUser=``), then ``$NOTIFY_SOCKET`` and
``$WATCHDOG_USEC``. It is not systemd: the sandboxing (``ProtectSystem=``, the system-call
filter and the rest) is left to ``systemd-analyze``, which checks the unit's syntax.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

UNIT = Path(__file__).resolve().parent.parent / "deploy" / "retention.service"
SERVICE_UID = 61234  # a uid of no user, as DynamicUser= picks one
INSTALLED = "/opt/retention/bin/retention"  # where the notes install the command
UNIT_NAME = "retention.service"
ROOTED = re.compile(r"(?<![\w.])/(?:etc|var/lib|run)/")


def service_settings(text: str | None = None) -> dict[str, list[str]]:
    """The unit's ``[Service]`` keys, each with every value it is given, in order."""
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in (UNIT.read_text(encoding="utf-8") if text is None else text).splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
        elif section == "Service":
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def install_steps(text: str | None = None) -> list[str]:
    """The shell commands of the unit's install notes: each line indented by three spaces after
    ``# Install``, up to the ``systemctl`` one (deeper lines are their comments)."""
    lines = (UNIT.read_text(encoding="utf-8") if text is None else text).splitlines()
    start = next(n for n, line in enumerate(lines) if line.startswith("# Install"))
    steps = []
    for line in lines[start + 1 :]:
        if line.startswith("#   ") and not line.startswith("#    "):
            steps.append(line.removeprefix("#   ").split("  #", 1)[0].strip())
            if steps[-1].startswith("systemctl "):
                break
    return steps


def python_command() -> list[str]:
    """This test run's interpreter, with the project installed: it stands for the venv the notes
    create (`pip install customgpt-retention` needs the package index)."""
    return [sys.executable, "-m", "retention"]


def unprivileged(uid: int = SERVICE_UID) -> list[str]:
    """Run a command as ``uid`` and its own group, with no supplementary groups and
    ``no_new_privs`` (``NoNewPrivileges=yes``); from root, as the tests run in CI."""
    return [
        "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--no-new-privs",
    ]  # fmt: skip


@dataclass
class Installed:
    """A temporary root with what the install steps made, and the paths the unit names."""

    root: Path
    token: str
    ran: list[str] = field(default_factory=list)

    def path(self, absolute: str) -> Path:
        """An absolute path of the unit, under this root."""
        return self.root / absolute.lstrip("/")

    def rewrite(self, text: str) -> str:
        """Every absolute path under /etc, /var/lib or /run in ``text``, under this root (an
        SQLite URL's too: ``sqlite+aiosqlite:////var/lib/...``)."""
        return ROOTED.sub(lambda found: f"{self.root}{found[0]}", text)


def install(root: Path, *, token: str) -> Installed:
    """Run the notes' install steps that write files, under ``root``, as root; skip the package
    install (this run's interpreter stands for it) and the systemctl (the test plays it)."""
    installed = Installed(root=root, token=token)
    (root / "etc" / "systemd" / "system").mkdir(parents=True)  # as the OS has it
    command = " ".join(shlex.quote(part) for part in python_command())
    for step in install_steps():
        if step.startswith(("apt-get ", "python3 -m venv", "systemctl ")):
            continue
        shell = installed.rewrite(step).replace(INSTALLED, command)
        subprocess.run(
            ["bash", "-euo", "pipefail", "-c", shell],
            cwd=UNIT.parent.parent,
            env={**os.environ, "TOKEN": token},
            check=True,
            capture_output=True,
        )
        installed.ran.append(step)
    return installed


class NotifySocket:
    """A datagram socket listening as systemd's ``/run/systemd/notify`` does: each message with
    the pid and uid of the process that sent it (``SO_PASSCRED``)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        os.chmod(path, 0o777)  # as systemd's: any service's user may write to it
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.setblocking(False)
        self.messages: list[Message] = []
        self._arrived = asyncio.Event()
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._read)

    def _read(self) -> None:
        while True:
            try:
                data, ancillary, _flags, _address = self.sock.recvmsg(
                    4096, socket.CMSG_SPACE(struct.calcsize("iII"))
                )
            except BlockingIOError:
                return
            pid = uid = -1
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid, uid, _gid = struct.unpack("iII", payload[: struct.calcsize("iII")])
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append(Message(fields, pid=pid, uid=uid, at=time.monotonic()))
            self._arrived.set()

    def having(self, key: str, value: str = "1") -> list[Message]:
        return [m for m in self.messages if m.fields.get(key) == value]

    async def wait_for(self, key: str, value: str = "1", *, count: int = 1, within: float) -> None:
        async with asyncio.timeout(within):
            while len(self.having(key, value)) < count:
                self._arrived.clear()
                await self._arrived.wait()

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()


@dataclass(frozen=True)
class Message:
    fields: dict[str, str]
    pid: int
    uid: int
    at: float  # time.monotonic() when it arrived


def prepare_service(installed: Installed, *, uid: int = SERVICE_UID) -> tuple[Path, Path]:
    """What systemd makes before ``ExecStart``: the state directory and the credentials.
    Returns (state directory, credentials directory)."""
    settings = service_settings()
    (state_name,) = settings["StateDirectory"]
    state = installed.path(f"/var/lib/{state_name}")
    state.mkdir(parents=True)
    os.chown(state, uid, uid)
    state.chmod(int(settings["StateDirectoryMode"][0], 8))
    credentials = installed.path(f"/run/credentials/{UNIT_NAME}")
    credentials.mkdir(parents=True)
    for spec in settings.get("LoadCredential", []):
        name, _, source = spec.partition(":")
        target = credentials / name
        shutil.copyfile(installed.path(source), target)
        os.chown(target, uid, uid)
        target.chmod(0o400)
    os.chown(credentials, uid, uid)
    credentials.chmod(0o500)
    return state, credentials


def service_environment(
    installed: Installed, credentials: Path, notify: Path | None, *, watchdog_usec: int | None
) -> dict[str, str]:
    """The environment systemd gives the service: its ``Environment=`` lines (``%d`` is the
    credentials directory), ``$CREDENTIALS_DIRECTORY``, ``$NOTIFY_SOCKET``, ``$WATCHDOG_USEC``."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
    for line in service_settings().get("Environment", []):
        key, _, value = line.partition("=")
        env[key] = installed.rewrite(value).replace("%d", str(credentials))
    env["CREDENTIALS_DIRECTORY"] = str(credentials)
    if notify is not None:
        env["NOTIFY_SOCKET"] = str(notify)
    if watchdog_usec is not None:
        env["WATCHDOG_USEC"] = str(watchdog_usec)
    return env


def exec_start(installed: Installed) -> list[str]:
    """``ExecStart=``, with the installed command replaced by this run's interpreter."""
    (line,) = service_settings()["ExecStart"]
    argv = shlex.split(line)
    assert argv[0] == INSTALLED, argv
    return python_command() + [installed.rewrite(arg) for arg in argv[1:]]


async def start_service(
    installed: Installed,
    *,
    env: dict[str, str],
    uid: int = SERVICE_UID,
) -> asyncio.subprocess.Process:
    """``ExecStart=`` as ``uid``, in ``WorkingDirectory=``, with ``UMask=``."""
    settings = service_settings()
    (workdir,) = settings["WorkingDirectory"]
    return await asyncio.create_subprocess_exec(
        *unprivileged(uid),
        *exec_start(installed),
        env=env,
        cwd=installed.rewrite(workdir),
        umask=int(settings["UMask"][0], 8),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
