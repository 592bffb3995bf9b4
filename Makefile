# mcp-gateway — `make run` serves a real MCP server on 127.0.0.1:8080; `make test` checks everything.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The official TypeScript SDK client the end-to-end tests drive (tests/e2e/test_ts_sdk_modern.py).
TS_CLIENT := tests/clients/ts
TS_STAMP  := $(TS_CLIENT)/node_modules/.installed
HOST   ?= 127.0.0.1
PORT   ?= 8080

.DEFAULT_GOAL := help
.PHONY: help run test lint typecheck pytest tsclient bench clean

help: ## List the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# npm ci installs exactly the lock file (and empties node_modules first, stamp included). Without
# npm the TS client tests skip, except under CI, where they fail: .ci/run installs Node.js.
$(TS_STAMP): $(TS_CLIENT)/package.json $(TS_CLIENT)/package-lock.json
	@if command -v npm >/dev/null; then \
		cd $(TS_CLIENT) && npm ci --no-audit --no-fund && touch node_modules/.installed; \
	else \
		echo "npm not found: the TypeScript SDK client tests will not run"; \
	fi

# As root, the virtualenv's interpreter may sit where no other user may run it (under /root): no
# isolation between children is possible then, and a gateway left to choose refuses root
# children. The loopback trial names that choice instead (override with RUN_ISOLATION=).
RUN_ISOLATION ?= $(if $(filter 0,$(shell id -u)),--child-isolation none)

run: $(STAMP) ## Serve the mcp-server-time MCP server at http://$(HOST):$(PORT)/mcp
	$(BIN)/mcp-gateway serve --host $(HOST) --port $(PORT) --log-format text $(RUN_ISOLATION) -- $(BIN)/mcp-server-time

lint: $(STAMP) ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP) ## mypy --strict
	$(BIN)/mypy

tsclient: $(TS_STAMP) ## Install the TypeScript SDK client the end-to-end tests drive (npm ci)

pytest: $(STAMP) $(TS_STAMP) ## The test suite only
	$(BIN)/pytest

test: lint typecheck pytest ## Lint, type-check and run the test suite

bench: $(STAMP) ## Benchmark the gateway against the raw stdio pipe
	$(BIN)/python -m tests.bench

clean: ## Remove the virtualenv, the TS client's node_modules and caches
	rm -rf $(VENV) $(TS_CLIENT)/node_modules .mypy_cache .ruff_cache .coverage *.egg-info
