# edge_runtime developer entry points. `make demo` and `make test` work on a fresh Debian/Ubuntu machine
# with Python 3.10+; `make sysdeps` (run by .ci/run, needs root or sudo) installs the system packages.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export EDGE_CACHE_DIR ?= $(CURDIR)/.cache
DEMO_OUT ?= out/demo

.PHONY: setup demo test test-fast lint typecheck sysdeps clean bench review-demo

setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "edge_runtime needs Python 3.10+"' \
	  || { echo "make setup: Python 3.10 or newer is required (set PYTHON=python3.11)"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) \
	  || { echo "make setup: cannot create a venv; on Debian/Ubuntu: apt-get install python3-venv"; exit 1; }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[build,train,dev,review]'
	@touch $(STAMP)

demo: setup
	$(VENV)/bin/edge-build --profile dev-cpu --out $(DEMO_OUT)
	$(PY) build_scripts/demo_run.py --bundle $(DEMO_OUT)/bundle

# The unknown-object loop on the demo catalogue: build, edge-run on new products, edge-review collects and groups,
# a reviewer labels (the script; INTERACTIVE=1 leaves it to you in the browser), export, rebuild, check.
review-demo: setup
	$(PY) build_scripts/review_demo.py $(if $(INTERACTIVE),--interactive)

# The README's test command (and CI's): lint, format, types, then every test.
test: lint typecheck
	$(PY) -m pytest -q

# While working: the same checks without the slow tests (`pytest -m "not slow"`).
test-fast: lint typecheck
	$(PY) -m pytest -q -m "not slow"

lint: setup
	$(VENV)/bin/ruff check edge_runtime tests benchmarks build_scripts
	$(VENV)/bin/ruff format --check edge_runtime tests benchmarks build_scripts

typecheck: setup
	$(VENV)/bin/mypy

bench: setup
	$(PY) benchmarks/run_all.py

# The acceptance step for a new device image (README, "GPU paths"): on a machine with an NVIDIA GPU, installs
# onnxruntime-gpu and the driver's cuda-python in a throwaway venv and prints one table (exit 2 without a GPU).
# WHEELHOUSE=DIR installs from a folder of wheels, for a device without network. No `setup`: a device does not
# need the packaging host's extras (torch); the system Python starts it.
.PHONY: device-check
device-check:
	$(PYTHON) benchmarks/device_check.py $(if $(WHEELHOUSE),--wheelhouse $(WHEELHOUSE))

# docs/robustness.md: every bad-input case tried against the real tools, and what they did (needs mosquitto).
.PHONY: docs
docs: setup
	$(PY) build_scripts/write_robustness_doc.py

# System packages the tests use for real: mosquitto (broker and mosquitto_passwd), openssl (a test CA for
# MQTT over TLS), systemd (systemd-analyze verify for the units), chromium and its driver (the review page in a
# real browser), postgresql (edge-review on a real server: the test starts its own cluster). Only what is
# missing is installed.
SYS_TOOLS := mosquitto:mosquitto mosquitto_passwd:mosquitto openssl:openssl systemd-analyze:systemd \
  chromium:chromium chromedriver:chromium-driver pg_ctlcluster:postgresql
sysdeps:
	@missing=""; for pair in $(SYS_TOOLS); do tool=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$tool >/dev/null 2>&1 || [ -x /usr/sbin/$$tool ] || missing="$$missing $$pkg"; done; \
	if [ -z "$$missing" ]; then echo "sysdeps: all present"; \
	else SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); echo "sysdeps: installing$$missing"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; fi

clean:
	rm -rf out .cache .pytest_cache
