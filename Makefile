# Fresh machine: `make demo` runs the whole loop locally; `make test` runs the test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
# make test runs test files on this many pytest-xdist workers (each file on one worker, in order)
TEST_WORKERS ?= 2

.PHONY: venv demo test lint unit test-faults test-heavy test-fleet packages test-packages clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[collector,dev]'
	touch $@

demo: venv
	$(BIN)/python -m agent.demo --project . --workdir demo

lint: venv
	$(BIN)/ruff check agent tests $(wildcard bench)
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

test: venv
	bash .ci/system-deps
	$(MAKE) lint
	. .ci/test-env && $(BIN)/pytest -m "not fleet and not heavy" -n $(TEST_WORKERS) --dist loadfile --durations=15 $(PYTEST_ARGS)

unit: venv
	$(BIN)/pytest -m "not ansible and not fleet" $(PYTEST_ARGS)

# The agent under faults (part of `make test`): kills, corrupt state, full disk (root), hostile trees
test-faults: venv
	$(BIN)/pytest tests/faults $(PYTEST_ARGS)

# The tests marked heavy, left out of `make test` to keep it within its time budget (docs/testing.md): the
# differential test (tests/semantics/test_differential.py) and the kill tests (tests/faults/test_kill.py).
test-heavy: venv
	. .ci/test-env && $(BIN)/pytest -m "heavy and not fleet" tests -n $(TEST_WORKERS) --dist loadfile --durations=10 $(PYTEST_ARGS)

# .deb and .rpm of gitops-agent and gitops-collector into dist/ (root: builds in a chroot; docs/packaging.md).
# Rebuilt only when a tracked file they are made from changed (`rm dist/.built` forces it).
packages: dist/.built

dist/.built: $(VENV)/.installed $(shell git ls-files agent packaging pyproject.toml 2>/dev/null)
	bash .ci/system-deps
	$(BIN)/python packaging/build.py --out dist
	touch $@

# Install/run/purge/boot tests of the packages in isolated hosts (root, minutes)
test-packages: dist/.built
	GITOPS_TEST_DIST=dist $(BIN)/pytest -m fleet tests/packaging $(PYTEST_ARGS)

# The fleet in a box: 4 isolated hosts with the agent's .deb, a Git server and a collector (root, minutes)
test-fleet: dist/.built
	GITOPS_TEST_DIST=dist $(BIN)/pytest -m fleet tests/fleet $(PYTEST_ARGS)

clean:
	rm -rf demo dist build .pytest_cache .mypy_cache .ruff_cache
