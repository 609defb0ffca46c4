# The two commands: `make demo` and `make test`. Both bootstrap everything they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEB_PACKAGES := redis-server chromium xmlsec1
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

CERTIFIED_OP := tests/fixtures/certified_op

.PHONY: test demo lint typecheck unit system-packages node-packages bench clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# Debian packages the tests drive for real: redis-server (store), chromium (browser tests),
# xmlsec1 (pysaml2's IdP signs and verifies with it).
system-packages:
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	command -v xmlsec1 >/dev/null 2>&1 || missing="$$missing xmlsec1"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

# The certified OpenID Provider the tests sign in at (panva's oidc-provider under Node).
node-packages: $(CERTIFIED_OP)/node_modules/.package-lock.json

$(CERTIFIED_OP)/node_modules/.package-lock.json: $(CERTIFIED_OP)/package-lock.json
	@if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then \
	  echo "installing Debian packages: nodejs npm"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq nodejs npm; \
	fi
	npm ci --prefix $(CERTIFIED_OP) --no-audit --no-fund
	touch $@

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy identity service

test: $(STAMP) system-packages node-packages lint typecheck
	$(BIN)/pytest -n 2 --dist worksteal

# `make demo PORT=9000 IDP_PORT=9001`: the broker and the development IdP on other ports.
demo: $(STAMP)
	$(BIN)/chime-broker demo $(if $(PORT),--port $(PORT)) $(if $(IDP_PORT),--idp-port $(IDP_PORT))

# py-spy (the `bench` extra) draws `--profile`'s flame graph; the tests do not need it.
$(VENV)/.bench-installed: $(STAMP)
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $@

bench: $(VENV)/.bench-installed
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) *.egg-info build dist
