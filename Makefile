# Entry points for people and CI. Everything installs itself on a fresh Debian 12 machine
# (as root): Python tooling from uv.lock, services through `carbonflow stack up`.

PYTHON ?= python3
TOOLS  := .tools
UV     := $(TOOLS)/bin/uv
VENV   := .venv
export UV_PYTHON_DOWNLOADS := never
RUN    := $(UV) run --frozen --no-sync --python $(VENV)/bin/python

.PHONY: help setup demo test lint typecheck unit integration stack-up stack-down stack-status stack-reset bench bench-ingest bench-stream bench-kernels clean

help:
	@echo "make demo   - run the whole system on a simulated factory (Ctrl-C stops it)"
	@echo "make test   - set everything up and run lint, type checks and the whole test suite"
	@echo "make stack-up | stack-down | stack-status | stack-reset - the local services"
	@echo "make bench  - end-to-end pipeline benchmark (JSON)"
	@echo "make bench-ingest - ingest (MQTT in, Kafka out) next to the raw broker rate (JSON)"
	@echo "make bench-stream - one stream worker (Kafka to rows) next to a per-event agent (JSON)"
	@echo "make bench-kernels - Numba kernels next to NumPy and pure Python, one core (JSON)"

$(UV):
	@PYTHON=$(PYTHON) ./infra/bootstrap.sh $(TOOLS)

$(VENV)/.synced: $(UV) uv.lock pyproject.toml
	@echo "==> installing Python dependencies from uv.lock"
	@$(UV) sync --frozen --all-extras --python $(PYTHON) --quiet
	@touch $@

setup: $(VENV)/.synced

stack-up: setup
	@$(RUN) carbonflow stack up

stack-down: setup
	@$(RUN) carbonflow stack down

stack-status: setup
	@$(RUN) carbonflow stack status

stack-reset: setup
	@$(RUN) carbonflow stack reset

demo: setup
	@$(RUN) carbonflow demo

lint: setup
	@echo "==> ruff"
	@$(RUN) ruff check .
	@$(RUN) ruff format --check .
	@echo "==> JSON Schemas in sync"
	@$(RUN) python -m schemas.export --check
	@echo "==> Sparkplug B protobuf code in sync"
	@$(RUN) python -m services.ingest.sparkplug.codegen --check

typecheck: setup
	@echo "==> mypy"
	@$(RUN) mypy

unit: setup
	@$(RUN) pytest tests/unit

test: lint typecheck stack-up
	@echo "==> pytest (unit, integration, end-to-end)"
	@$(RUN) pytest

bench: stack-up
	@$(RUN) python bench/pipeline.py

bench-ingest: stack-up
	@$(RUN) python bench/ingest.py

bench-stream: stack-up
	@$(RUN) python bench/stream.py

bench-kernels: setup
	@$(RUN) python bench/kernels.py

clean:
	rm -rf $(VENV) $(TOOLS) .mypy_cache .ruff_cache .pytest_cache
