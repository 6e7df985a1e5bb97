"""The commands that act on no account: ``init``, ``probe``, ``db upgrade``, ``db backup``,
``demo`` and ``emulate``. Like :mod:`retention.commands`, one function per command, each
returning its exit code; the emulator and the demo are imported only by the commands that use
them, so ``retention check`` stays light."""

from __future__ import annotations

import asyncio
import signal
import sys
import urllib.error
import urllib.request
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from retention.config import TOKEN_ENV, Settings, parse_listen
from retention.errors import ConfigError
from retention.runtime import open_store

if TYPE_CHECKING:
    from retention.emulator import Emulator

EXIT_OK = 0


def probe(settings: Settings, *, ready: bool, timeout: float) -> int:
    """GET /healthz (or /readyz) on the configured admin address; 0 when it answers 200."""
    if not settings.admin.listen:
        raise ConfigError("the admin surface is off ([admin] listen is empty)", key="admin.listen")
    host, port = parse_listen(settings.admin.listen)
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/{'readyz' if ready else 'healthz'}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            print(response.read().decode(errors="replace"))
            return 0
    except urllib.error.HTTPError as exc:
        print(f"{url}: {exc.code} {exc.read().decode(errors='replace')}", file=sys.stderr)
    except (urllib.error.URLError, OSError) as exc:
        print(f"{url}: {exc}", file=sys.stderr)
    return 1


async def db_upgrade(settings: Settings) -> int:
    async with open_store(settings, migrate=False) as store:
        before, after = await store.upgrade()
    if before == after:
        print(f"store is at {after} (head): nothing to do")
    else:
        print(f"store upgraded from {before or 'empty'} to {after}")
    return 0


async def db_backup(settings: Settings, target: Path) -> int:
    """A consistent copy of the live store (SQLite's online backup), 0600, never overwriting;
    of a store at an older migration too: the copy to keep before ``db upgrade``."""
    async with open_store(settings, migrate=False, create=False, current=False) as store:
        await store.db.backup(target)
    print(f"store backed up to {target}")
    return EXIT_OK


def example_config() -> Path:
    """Where the documented example, ``config.example.toml``, is: inside the package, or the
    repository's top level.

    The file lives at the repository's top level; the wheel carries it as
    ``retention/config.example.toml`` (pyproject.toml's force-include), as it does Alembic's
    scripts (see :func:`retention.migrate.script_location`). A checkout or an editable install
    has only the former.
    """
    packaged = Path(str(resources.files("retention") / "config.example.toml"))
    if packaged.is_file():
        return packaged
    return Path(__file__).resolve().parent.parent / "config.example.toml"


def init(path: str) -> int:
    """Write a starter config that cannot delete: dry_run on, every policy commented out.

    Never overwrites: an existing PATH is a ConfigError (exit 2). ``-`` writes to stdout.
    The next steps it prints name the installed copy of ``config.example.toml``, which
    documents every key.
    """
    starter = (resources.files("retention") / "starter.toml").read_text(encoding="utf-8")
    if path == "-":
        sys.stdout.write(starter)
        return EXIT_OK
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("x", encoding="utf-8") as out:
            out.write(starter)
    except FileExistsError:
        raise ConfigError(
            "exists already: init never overwrites a file; name another PATH", source=path
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot write: {exc.strerror}", source=path) from None
    print(f"wrote {path}: a starter config that deletes nothing (dry_run = true, no policies)")
    print("next:")
    print(f"  1. write your policies in {path}; every key is documented, with its default, in")
    print(f"     {example_config()}")
    print(f"  2. retention check --config {path}")
    print(f"  3. export {TOKEN_ENV}=...            (or [api] token_file)")
    print(f"  4. retention db upgrade --config {path} && retention plan --config {path}")
    print(f"  5. when the plan is what you expect: dry_run = false; retention run --config {path}")
    return EXIT_OK


def demo(seconds: float, *, keep: Path | None = None) -> int:
    from retention.demo import main  # the emulator comes with it: only this command loads it

    if keep is not None and keep.exists() and (not keep.is_dir() or any(keep.iterdir())):
        raise ConfigError(f"{keep} exists and is not an empty folder", key="--keep")
    return main(seconds, keep=keep)


def emulate(
    *,
    port: int,
    token: str | None,
    seed: Path | None,
    per_page: int | None,
    rate_limit: int | None,
    latency: float,
) -> int:
    """Serve the emulator on 127.0.0.1 until SIGINT or SIGTERM."""
    from retention.emulator import DEFAULT_TOKEN, Emulator, RateLimit, load_seed, sample_state

    now = datetime.now(UTC)
    if seed is not None:
        state, seeded_per_page = load_seed(seed, now=now)
        per_page = per_page or seeded_per_page
    else:
        state = sample_state(now=now)
    if per_page is not None and per_page < 1:
        raise ConfigError("must be at least 1", key="--per-page")
    emulator = Emulator(
        state, token=token or DEFAULT_TOKEN, per_page=per_page or 20, latency=latency
    )
    if rate_limit:
        emulator.rate_limit = RateLimit(rate_limit, 60.0)
    token_hint = "the --token value" if token else DEFAULT_TOKEN
    return asyncio.run(_serve_until_stopped(emulator, port, token_hint=token_hint))


async def _serve_until_stopped(emulator: Emulator, port: int, *, token_hint: str) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with emulator.serve("127.0.0.1", port) as url:
            agents = ", ".join(str(a) for a in sorted(emulator.state.agents))
            print(
                f"emulator serving {url} (bearer token: {token_hint}; agents {agents}; "
                f"{emulator.state.count()} conversations). Ctrl-C stops it.",
                file=sys.stderr,
                flush=True,
            )
            await stop.wait()
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on 127.0.0.1:{port}: {exc.strerror}", key="--port"
        ) from None
    print("emulator stopped", file=sys.stderr)
    return EXIT_OK
