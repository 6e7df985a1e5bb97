# retention: the everyday commands. `make install` is implied by the others.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SOURCES := retention migrations tests benchmarks mutation

.PHONY: install test lint format demo emulate bench bench-store bench-scale bench-audit bench-diff stress mutate lock wheel-smoke container-smoke monitoring-check clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,postgres]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check $(SOURCES)
	$(BIN)/ruff format --check $(SOURCES)
	$(BIN)/mypy --strict $(SOURCES)
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff check --fix $(SOURCES)
	$(BIN)/ruff format $(SOURCES)

demo: $(STAMP)
	$(BIN)/retention demo

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_sweep.py
	$(BIN)/python benchmarks/bench_due.py
	$(BIN)/python benchmarks/bench_fresh.py

# The store-size figures (README: Performance) at 10k, 100k and 1M tracked conversations, with
# every goal and whether it is met (~15 minutes with 1M; built stores are cached in /tmp).
SIZES ?= 10000 100000 1000000
bench-store: $(STAMP)
	$(BIN)/python benchmarks/bench_store.py --sizes $(SIZES)

# One `retention once` serving 200 accounts of 500 conversations (half due), each on its own
# emulator and a budget of 600 calls a minute, more than one process can use: wall and CPU time,
# peak RSS, calls/s sustained, CPU per 1,000 calls, each account's share of its budget, and how
# many 60-a-minute accounts one process can serve (~6 minutes; files in /tmp/bench-scale).
# BENCH_SCALE_ARGS="--conversations 300" for a shorter run (~3.5 minutes).
BENCH_SCALE_ARGS ?=
bench-scale: $(STAMP)
	$(BIN)/python benchmarks/bench_scale.py $(BENCH_SCALE_ARGS)

# The evidence commands on an audit of a million chained rows (built once, cached in
# /tmp/bench-audit): `audit export` (JSON lines, CSV), `audit verify` and `report --json`, each in
# its own process: wall and CPU time, peak RSS; the goal an export under 150 MB (~2.5 minutes).
# BENCH_AUDIT_ARGS="--rows 100000" for a shorter run.
BENCH_AUDIT_ARGS ?=
bench-audit: $(STAMP)
	$(BIN)/python benchmarks/bench_audit.py $(BENCH_AUDIT_ARGS)

# `retention diff` on the store of a million conversations bench-store builds (cached in
# /tmp/retention-bench-store; built in about a minute when missing): wall, CPU, peak RSS and the
# goals (under a minute, under 150 MiB).
bench-diff: $(STAMP)
	$(BIN)/python benchmarks/bench_diff.py

# Mutation testing of the pure core with mutmut (minutes; not part of `make test`): each of
# policy.py, timefmt.py and budget.py is mutated in a copy of its own, every mutant runs only
# that module's test file, and the score per module is printed. Fails on a surviving mutant that
# mutation/equivalent.toml does not list with the reason it is equivalent.
# Timing-sensitive process tests, run by hand (a few minutes; not part of `make test`).
STRESS_RUNS ?= 10
stress: $(STAMP)  # the real-process tests (leases, standby, pauses), again and again
	for run in $$(seq $(STRESS_RUNS)); do \
		$(BIN)/pytest -q tests/test_lease.py tests/test_run.py || exit 1; \
	done

mutate: $(STAMP)
	$(BIN)/python mutation/mutate.py

# The container installs from these locks (exact versions, hashes): requirements.lock holds the
# runtime dependencies with the postgres extra (asyncpg) so one image serves SQLite and
# PostgreSQL stores; requirements-build.lock holds the build backend (hatchling and what it
# needs, from [build-system] requires). Refresh both after changing dependencies (pip-compile
# keeps the pins it can: `make lock UPGRADE=--upgrade` moves them); the machine's own pip
# settings are left out so the locks hold only PyPI.
UPGRADE ?=
PIP_COMPILE := env -u PIP_FIND_LINKS -u PIP_CONSTRAINT -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL \
	PIP_CONFIG_FILE=/dev/null $(BIN)/pip-compile --quiet $(UPGRADE) --generate-hashes \
	--strip-extras --no-emit-index-url --no-emit-find-links
lock: $(STAMP)
	$(PIP_COMPILE) --extra postgres --output-file requirements.lock pyproject.toml
	$(PIP_COMPILE) --build-deps-for wheel --only-build-deps --output-file requirements-build.lock \
	    pyproject.toml

# Build the sdist and the wheel (python -m build) and check them (twine check --strict, the
# wheel's metadata and files), install the wheel in a fresh venv outside the repository and,
# from a folder outside it, run --version, init, check, db upgrade and the demo (~1 minute).
wheel-smoke: $(STAMP)
	PYTHON=$(BIN)/python scripts/wheel-smoke

container-smoke:
	scripts/container-smoke

# The Prometheus alert rules: promtool's syntax check and their unit tests (needs promtool:
# Debian's prometheus package). The same run as part of `make test` (tests/test_monitoring.py).
monitoring-check:
	promtool check rules deploy/prometheus/retention-alerts.yml
	cd deploy/prometheus && promtool test rules retention-alerts.test.yml

emulate: $(STAMP)
	$(BIN)/retention emulate --port 8765

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis build dist *.egg-info
