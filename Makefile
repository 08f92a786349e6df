# tradeguard — every target creates .venv when missing and installs the pinned dependencies into it.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?= -n 2

.PHONY: run test test-attacks test-system chaos bench venv clean

run: $(STAMP)
	$(VENV)/bin/tradeguard run

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# The system tests (tests/system): tradeguard under a real systemd in a podman container, and
# the OCI image. Need root, podman, runc, debootstrap; minutes, not seconds: not part of `test`.
# Only the #16 attack scenarios, once each (make test runs them too); see docs/CHAOS.md.
test-attacks: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS) -m attack tests/chaos

test-system: $(STAMP)
	TRADEGUARD_SYSTEM_TESTS=1 $(PY) -m pytest -p no:cacheprovider -n 0 -v tests/system

chaos: $(STAMP)
	$(VENV)/bin/tradeguard chaos run --iterations 20 --report chaos-report

bench: $(STAMP)
	$(PY) -m benchmarks.run_all

venv: $(STAMP)

$(STAMP): requirements.txt requirements-test.txt setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-test.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
