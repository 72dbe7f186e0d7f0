# pyqga: `make demo` runs the agent with a host-side demo; `make test` runs every test.
# Both set up what they need first (a virtualenv in .venv, and as root the Debian packages the
# tests use), so they work on a fresh machine.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
APT_PACKAGES := e2fsprogs util-linux xfsprogs btrfs-progs socat qemu-system-x86 qemu-utils libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients \
	libvirt-dev pkg-config gcc python3-dev

.PHONY: demo test lint deps bench clean

# Order-only on deps: the test extra's libvirt-python compiles against libvirt-dev, which deps
# installs (as root) and which must be there before pip runs. Without root and without those
# packages, install the rest: the libvirt tests skip (as the other root-only tests do).
$(STAMP): pyproject.toml | deps
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]' || { [ "$$(id -u)" != 0 ] && \
	  echo "libvirt-python could not be built (libvirt-dev missing?): installing without the libvirt extra" && \
	  $(PY) -m pip install --quiet -e '.[test-tools]'; }
	touch $(STAMP)

# Debian packages the filesystem tests need; only as root (CI and the test VMs run as root).
deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -z "$$(ls /var/lib/apt/lists/ 2>/dev/null | grep _Packages)" ] || [ -n "$$missing" ]; then \
	    apt-get update -qq; fi; \
	  if [ -n "$$missing" ]; then echo "installing:$$missing"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; fi; \
	else echo "deps: not root, skipping Debian packages (tests that need them will skip)"; fi

demo: $(STAMP) deps
	$(PY) -m harness.demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: $(STAMP) deps lint
	$(PY) -m pytest -q -ra tests

bench: $(STAMP) deps
	$(PY) bench/rpc.py
	$(PY) bench/freeze.py
	$(PY) bench/stall.py
	$(PY) bench/group.py

clean:
	rm -rf $(VENV) .cache build *.egg-info
