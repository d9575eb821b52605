# sophon-fleet developer commands. `make test` is what CI runs (.ci/run).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
APT_NEEDS := /usr/sbin/sshd:openssh-server /usr/bin/ssh:openssh-client /usr/bin/scp:openssh-client \
             /usr/bin/sudo:sudo /usr/sbin/ip:iproute2 /usr/sbin/tc:iproute2 /usr/bin/xz:xz-utils \
             /usr/bin/openssl:openssl /usr/sbin/haproxy:haproxy /usr/bin/curl:curl \
             /usr/bin/dumpimage:u-boot-tools /usr/bin/dtc:device-tree-compiler

.PHONY: setup test lint compat pytest test-reference test-vendor demo clean-sim

setup: $(VENV)/.installed
	@missing=""; for pair in $(APT_NEEDS); do [ -x "$${pair%%:*}" ] || missing="$$missing $${pair##*:}"; done; \
	if [ -n "$$missing" ]; then \
	  echo "make setup: installing$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

$(VENV)/.installed: setup.cfg pyproject.toml
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $@

lint: setup
	$(BIN)/ruff check provision sim tests benchmarks chat
	$(BIN)/ruff format --check provision sim tests benchmarks chat
	$(BIN)/mypy provision chat

compat: setup
	$(BIN)/vermin -q --no-tips --violations --eval-annotations -t=3.8- chat sim/sail sim/sail_cmodel sim/itb.py sim/kit provision/boxside provision/memory/bootfit.py

pytest: setup
	PYTHONDONTWRITEBYTECODE=1 $(BIN)/python -m pytest -q -m "not reference and not vendor"

test: lint compat pytest

# The emulator's GLM-4 against transformers' GlmForCausalLM (CPU torch from the local wheel + transformers).
test-reference: setup
	$(BIN)/python -m pip install -q -e '.[reference]'
	$(BIN)/python -m pytest -q -m reference

# The vendor's compiler and runtime (docs/vendor-runtime.md): tpu-mlir in its own Python 3.10 venv under
# SOPHON_FLEET_CACHE, libbmrt + the BM1684X cmodel under SOPHON_FLEET_SIM_CACHE (both made on first use), real
# compiled bmodels of the tiny GLM-4. Serial: the cmodel keeps two cores busy.
test-vendor: setup
	$(BIN)/python -m pip install -q -e '.[reference]'
	PYTHONDONTWRITEBYTECODE=1 $(BIN)/python -m pytest -q -m vendor --durations=12 tests/vendor

demo: setup
	$(BIN)/python -m sim.demo

clean-sim: setup
	$(BIN)/sophon-fleet sim down
