# The two set-up commands of README.rst:
#   make run    install turnrelay into .venv and run it on the loopback default
#   make test   install everything the tests need and run the whole suite
# .ci/run calls `make test`, so CI runs exactly what a developer runs.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Extra arguments for the server (make run ARGS="--listen udp:3478") and pytest.
ARGS ?=
PYTEST_ARGS ?=
# The browser demo page `make run` serves (loopback only; see README.rst,
# "Use it from a web page"); DEMO_PAGE= turns it off.
DEMO_PAGE ?= tcp:8478:interface=127.0.0.1

.PHONY: run test lint system-deps clean offload

# The kernel fast path (turnrelay/offload): clang compiles it for BPF
# against libbpf's headers (Debian packages clang and libbpf-dev, which
# `make system-deps` installs).  The asm headers are the host's.
BPF_OBJECT := turnrelay/offload/channeldata.bpf.o
BPF_ARCH_INCLUDE := /usr/include/$(shell uname -m)-linux-gnu

# An editable install in "compat" mode puts this checkout on sys.path, so
# twistd finds twisted/plugins/turnrelay_plugin.py; the default editable mode
# would hide it.  Listing the plugins afterwards writes dropin.cache.
$(BIN)/.installed-run: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check \
		--config-settings editable_mode=compat -e .
	$(BIN)/python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
	touch $@

$(BIN)/.installed-test: $(BIN)/.installed-run
	$(BIN)/pip install --quiet --disable-pip-version-check \
		--config-settings editable_mode=compat -e '.[test]'
	touch $@

$(BPF_OBJECT): turnrelay/offload/channeldata.bpf.c
	@command -v clang >/dev/null 2>&1 || { echo "make: clang is missing: run make system-deps (or install clang and libbpf-dev) to build $@" >&2; exit 1; }
	clang -O2 -g -target bpf -I$(BPF_ARCH_INCLUDE) -c $< -o $@

offload: $(BPF_OBJECT)

# The loopback default relays in user space: without clang, run builds no
# kernel program, and the relay says the kernel path is not available.
run: $(BIN)/.installed-run
	@if command -v clang >/dev/null 2>&1; then $(MAKE) --no-print-directory offload; fi
	$(BIN)/twistd --nodaemon --pidfile= turnrelay \
		$(if $(DEMO_PAGE),--demo-page $(DEMO_PAGE)) $(ARGS)

system-deps:
	tools/install-system-deps

lint: $(BIN)/.installed-test
	$(BIN)/ruff check turnrelay tests twisted examples bench
	$(BIN)/ruff format --check turnrelay tests twisted examples bench
	$(BIN)/mypy

# -rs: pytest says why each skipped test was skipped (a missing tool, no root).
test: system-deps lint $(BPF_OBJECT)
	$(BIN)/python -m pytest -rs $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info twisted/plugins/dropin.cache _trial_temp* $(BPF_OBJECT)
