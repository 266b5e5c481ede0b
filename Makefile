# chatd: `make run` sets up .venv and runs the server; `make test` sets up
# .venv and runs every test. Both work on a fresh clone.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# An editable install in "compat" mode puts the checkout itself on sys.path,
# so twistd's plugin scan finds twisted/plugins/chatd_plugin.py in it (the
# default editable mode uses an import hook that the scan does not see).
PIP_INSTALL := $(BIN)/python -m pip install --quiet --disable-pip-version-check \
	--config-settings editable_mode=compat --editable

ARGS ?=

.PHONY: run test trial proto clean bench soak test-tools

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# setup.py builds the compiled hot path (chatd/protobuf/_speedups.c) in place:
# a change to it is built again by the next `make run` or `make test`.
BUILD_INPUTS := setup.cfg pyproject.toml setup.py chatd/protobuf/_speedups.c

$(VENV)/.installed-run: $(BUILD_INPUTS) | $(BIN)/python
	$(PIP_INSTALL) .
	touch $@

$(VENV)/.installed-test: $(BUILD_INPUTS) | $(BIN)/python
	$(PIP_INSTALL) '.[test]'
	touch $@ $(VENV)/.installed-run

run: $(VENV)/.installed-run
	$(BIN)/twistd --nodaemon --pidfile= chatd $(ARGS)

# Every test, twice: on the compiled hot path (which must have been built:
# "required" fails at once otherwise), then on the pure-Python one
# (docs/performance.md, "The compiled hot path").
test: $(VENV)/.installed-test test-tools
	CHATD_SPEEDUPS=required $(BIN)/python -m pytest $(PYTEST_ARGS)
	CHATD_SPEEDUPS=off $(BIN)/python -m pytest $(PYTEST_ARGS)

# Programs some tests run as a user would (the nc recipes of docs/*.md, curl
# and openssl against TLS listeners), and the real servers the cluster tests
# start on free ports in temporary folders (chatd/testservers.py: redis-server,
# PostgreSQL), as COMMAND:DEBIAN-PACKAGE. On Debian as
# root (the CI machine) the missing ones are installed; elsewhere the tests
# that need them are skipped, and this says which. PostgreSQL's package would
# create and start a "main" cluster on port 5432 that no test uses: the
# createcluster.conf written first (kept by --force-confold) says not to; and
# no package starts a service while they are installed (a policy-rc.d that
# refuses, for the install only, where the machine has none): ngircd's would
# listen on 6667 (the tests start their own ngircd, as make bench does).
TEST_TOOLS := nc:netcat-openbsd xxd:xxd curl:curl openssl:openssl \
	redis-server:redis-server redis-cli:redis-tools pg_ctlcluster:postgresql \
	haproxy:haproxy ngircd:ngircd
test-tools:
	@missing=; for pair in $(TEST_TOOLS); do \
	  command -v "$${pair%%:*}" >/dev/null || missing="$$missing $${pair#*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    case "$$missing" in *postgresql*) \
	      mkdir -p /etc/postgresql-common; \
	      [ -e /etc/postgresql-common/createcluster.conf ] \
	        || echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.conf;; \
	    esac; \
	    install="apt-get install -y --no-install-recommends -o Dpkg::Options::=--force-confold"; \
	    policy=; if [ ! -e /usr/sbin/policy-rc.d ]; then \
	      policy=/usr/sbin/policy-rc.d; printf '#!/bin/sh\nexit 101\n' > $$policy; chmod +x $$policy; \
	    fi; \
	    DEBIAN_FRONTEND=noninteractive $$install $$missing \
	      || { apt-get update && DEBIAN_FRONTEND=noninteractive $$install $$missing; }; \
	    [ -z "$$policy" ] || rm -f $$policy; \
	  else \
	    echo "make test: not installed:$$missing (the tests that run them are skipped)"; \
	  fi; \
	fi

$(VENV)/.installed-bench: $(BUILD_INPUTS) | $(BIN)/python
	$(PIP_INSTALL) '.[bench]'
	touch $@ $(VENV)/.installed-run

# Performance, measured on 127.0.0.1 (docs/performance.md): a table, JSON in
# bench/results/, a chart in docs/bench.png. QUICK=1 for the short run;
# BENCH_ARGS="--only 1,5 --profile" for more.
bench: $(VENV)/.installed-bench
	$(BIN)/python bench/run.py $(if $(filter-out 0,$(QUICK)),--quick) $(BENCH_ARGS)

# The soak test (docs/soak.md): hundreds of clients, well-behaved and
# hostile, against a real twistd on 127.0.0.1, then checks that the server
# serves, forgot every name and gave its memory back. Not part of make test.
# SOAK_SECONDS=60 by default; SOAK_ARGS="--clients 500 --seed 1" for more.
SOAK_SECONDS ?= 60
soak: $(VENV)/.installed-run
	$(BIN)/python soak/run.py --seconds $(SOAK_SECONDS) $(SOAK_ARGS)

# The same suite under Twisted's own runner.
trial: $(VENV)/.installed-test
	$(BIN)/trial tests

# Regenerate chatd/protobuf/chat_pb2.py from proto/chat.proto.
proto: $(VENV)/.installed-test
	cd proto && ../$(BIN)/python -m grpc_tools.protoc -I. \
		--python_out=../chatd/protobuf chat.proto

# What the tests leave: trial's _trial_temp*, the folders of trial's mktemp()
# under pytest (tests.test_*), Hypothesis' database.
clean:
	rm -rf $(VENV) build *.egg-info _trial_temp* tests.test_* .hypothesis \
		chatd/protobuf/_speedups*.so \
		twisted/plugins/dropin.cache
