# pyqga: `make demo` runs the agent with a host-side demo; `make test` runs every test.
# Both set up what they need first (a virtualenv in .venv, and as root the Debian packages the
# tests use), so they work on a fresh machine.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
APT_PACKAGES := e2fsprogs util-linux xfsprogs btrfs-progs socat qemu-system-x86 qemu-utils libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients \
	libvirt-dev pkg-config gcc python3-dev mmdebstrap
# chromium renders `pyqga fault report`'s page for tests/process/test_fault_report_render.py.
APT_PACKAGES += chromium
# lintian checks the .deb: `make dist` installs it, and so does `deps`, because
# tests/process/test_packaging.py runs it (a skip elsewhere, a failure in CI).
DIST_APT_PACKAGES := lintian
APT_PACKAGES += $(DIST_APT_PACKAGES)

.PHONY: demo fault-demo test lint deps apt-install bench clean dist

# Order-only on deps: the test extra's libvirt-python compiles against libvirt-dev, which deps
# installs (as root) and which must be there before pip runs. Without root and without those
# packages, install the rest: the libvirt tests skip (as the other root-only tests do).
$(STAMP): pyproject.toml | deps
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip 'setuptools>=77'
	$(PY) -m pip install --quiet -e '.[test]' || { [ "$$(id -u)" != 0 ] && \
	  echo "libvirt-python could not be built (libvirt-dev missing?): installing without the libvirt extra" && \
	  $(PY) -m pip install --quiet -e '.[agent,test-tools]'; }
	touch $(STAMP)

# Debian packages the filesystem tests need; only as root (CI and the test VMs run as root).
deps:
	@$(MAKE) --no-print-directory apt-install PACKAGES="$(APT_PACKAGES)"

apt-install:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  missing=""; for p in $(PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -z "$$(ls /var/lib/apt/lists/ 2>/dev/null | grep _Packages)" ] || [ -n "$$missing" ]; then \
	    apt-get update -qq; fi; \
	  if [ -n "$$missing" ]; then echo "installing:$$missing"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; fi; \
	else echo "deps: not root, skipping Debian packages (tests that need them will skip)"; fi

# The wheel and the guest's Debian package, built offline from the tree into dist/ (the venv's
# setuptools builds the wheel; the .deb vendors jsonrpcserver, the agent extra, from the venv).
# The .deb's Maintainer is whoever builds it: DEBFULLNAME and DEBEMAIL, as Debian's tools take it.
dist: $(STAMP)
	@$(MAKE) --no-print-directory apt-install PACKAGES="$(DIST_APT_PACKAGES)"
	@$(PY) -c 'import setuptools, sys; sys.exit(int(setuptools.__version__.split(".")[0]) < 77)' || \
	  $(PY) -m pip install --quiet --upgrade 'setuptools>=77'  # a venv older than PEP 639's license fields
	$(PY) packaging/build_dist.py

demo: $(STAMP) deps
	$(PY) -m tests.rig.demo

# Issue 21's durability proof in full: SQLite under 20 seeded power cuts a mode in the test VM
# (about 15 minutes under TCG); `make test` runs 2 a mode. SEED=N CUTS=N to change the plan.
fault-demo: $(STAMP) deps
	$(PY) -m tests.rig.fault_demo $(if $(SEED),--seed $(SEED)) $(if $(CUTS),--cuts $(CUTS))

# mypy --strict on protocol/, the agent and the host client ([tool.mypy] in pyproject.toml says which).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: $(STAMP) deps lint
	$(PY) -m pytest -q -ra --durations=25 tests

bench: $(STAMP) deps
	$(PY) -m bench.rpc
	$(PY) -m bench.floor
	$(PY) -m bench.freeze
	$(PY) -m bench.stall
	$(PY) -m bench.faults
	$(PY) -m bench.group
	$(PY) -m bench.abuse
	$(PY) -m bench.footprint

clean:
	rm -rf $(VENV) .cache .mypy_cache build dist *.egg-info
