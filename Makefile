# Two commands on a fresh machine: `make test` and `make run`. Everything else is a step they use.
PYTHON ?= python3
VENV := .venv
UV_VERSION := 0.13.9
UV := $(VENV)/bin/uv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.synced

.PHONY: install proto check-proto lint check test test-containers run bench bench-quick soak demo token clean

install: $(STAMP)

# The venv is rebuilt whenever the lockfile changes; uv installs exactly what uv.lock pins.
$(STAMP): uv.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"
	UV_PROJECT_ENVIRONMENT=$(VENV) $(UV) sync --frozen --python $(PY)
	touch $(STAMP)

proto: install
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) scripts/gen_protos.py

check-proto: install
	$(PY) -m pytest -q tests/test_generated_code.py

# Ruff alone (make check's first step).
lint: install
	$(VENV)/bin/ruff check services devstack tests scripts bench src

# The static checks, 15 s in a fresh clone on a quiet machine (mypy without its cache), 3 s after: ruff, buf lint and
# buf breaking of protos/ against the last release's image (buf.yaml; protos/released/README.md says how a release
# refreshes it; it holds exactly one image), then mypy, strict (pyproject's [tool.mypy]) on services/, src/coinstream
# (the client helpers and the pytest plugin), the dev tools and scripts/.
RELEASED_PROTOS = $(wildcard protos/released/coinstream-*.json)
check: lint
	$(VENV)/bin/buf lint
	$(VENV)/bin/buf breaking --against $(RELEASED_PROTOS)
	$(VENV)/bin/mypy services src/coinstream devstack/src/devstack scripts

# make check first (seconds; it stops make test before the suite), then two test processes, each taking a whole test
# file at a time with a stack of its own (tests/conftest.py): a test mostly waits for the services, so two processes
# halve the wall time on two cores. TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
test: check
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

# The image and the compose stack for real (needs Docker with Compose v2; says so and fails without): builds
# deploy/Dockerfile, starts deploy/compose.yaml + compose.production.yaml under a project of its own on free ports,
# tests it through the published ports, then removes it with its volumes. Reports durations and the image size.
# (A longer per-test limit than make test's: the first test pays for the image build and the stack's start.)
test-containers: install
	COINSTREAM_CONTAINER_TESTS=1 $(PY) -m pytest -o timeout=1800 tests/containers

run: install
	$(PY) -m devstack.run

# The benchmark of issue 6 on a fresh stack of its own (free ports, temporary data): a few minutes; results, a
# markdown table and a plot in bench/results/. bench-quick runs about 20 s of load on a smaller setup. Options go
# in BENCH_ARGS, e.g. BENCH_ARGS="--repo ../other-checkout" (`python -m bench --help`).
bench: install
	$(PY) -m bench $(BENCH_ARGS)

bench-quick: install
	$(PY) -m bench --quick $(BENCH_ARGS)

# Seeded chaos on a fresh stack of its own: services, NATS and PostgreSQL killed with -9 under a mixed load for
# SOAK_SECONDS (default 300), then every money identity checked. The seed is printed; SOAK_ARGS="--seed N" replays one.
SOAK_SECONDS ?= 300
soak: install
	$(PY) -m tests.support.chaos --seconds $(SOAK_SECONDS) $(SOAK_ARGS)

demo: install
	$(VENV)/bin/coinstream demo

token: install
	$(VENV)/bin/coinstream token

clean:
	rm -rf $(VENV) .data .tmp
