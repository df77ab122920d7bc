# edx-remote-cache — every command a developer or CI needs. `make demo` and `make test` install first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# mypy-checked strictly: the pure domain and the reconciler that glues it to the adapters
TYPED_PACKAGES := operator/edx_remote_cache/domain operator/edx_remote_cache/reconciler

.PHONY: install demo test test-fast e2e lint bench sandbox chart-readme clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@command -v memcached >/dev/null && command -v memcstat >/dev/null || { \
	  echo "installing Debian memcached + libmemcached-tools"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq memcached libmemcached-tools >/dev/null; }
	@# the sandbox VPC: network namespaces, veths and bridges (iproute2), security groups as nftables rules
	@command -v ip >/dev/null && command -v nft >/dev/null || { \
	  echo "installing Debian iproute2 + nftables"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq iproute2 nftables >/dev/null; }
	@# the Debian package starts a system memcached on 127.0.0.1:11211; the sandbox never needs it
	@-[ "$$(id -u)" = 0 ] && command -v systemctl >/dev/null && systemctl stop memcached >/dev/null 2>&1 || true
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[sandbox,test]'
	touch $(STAMP)

demo: install
	$(BIN)/edx-remote-cache demo

# Two workers, one test file each at a time (--dist loadfile keeps a module's sandbox and operator fixtures in one
# worker): the e2e tests mostly wait on intervals, so two halve the wall time (~14 -> ~8.5 min on 2 cores).
TEST_WORKERS ?= 2

test: install lint
	$(BIN)/pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile

test-fast: install
	$(BIN)/pytest -q -m "not e2e"

e2e: install
	$(BIN)/pytest -q -m e2e -n $(TEST_WORKERS) --dist loadfile

lint: install
	$(BIN)/ruff check operator tests bench
	$(BIN)/ruff format --check operator tests bench
	$(BIN)/lint-imports
	$(BIN)/mypy --strict --no-warn-unused-ignores $(TYPED_PACKAGES)

bench: install
	$(PY) bench/run.py

# charts/edx-remote-cache/README.md from values.schema.json and values.yaml (a test checks it is current)
chart-readme: install
	$(PY) tests/shipping/chart_readme.py

sandbox: install
	$(BIN)/edx-remote-cache sandbox --env-file .sandbox/env

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache bench/out .sandbox
