# Two commands set everything up on a fresh machine with Python 3.11 and make:
#   make demo   create .venv, install, scan every batch in data_samples/
#   make test   create/use the same .venv, run the test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test test-unit lint audit bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/poisonguard demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The fast tier alone (library code, no CLI scans, Prefect, MLflow or database), spread test by
# test over the workers: it has no module fixture worth keeping on one worker.
test-unit: $(STAMP)
	$(BIN)/python -m pytest -q -m unit --dist load

# ruff (lint, then the format check) and mypy, as configured in pyproject.toml; the lint group
# (ruff, mypy, pre-commit) goes into the same venv. All three run even if one fails.
LINT_STAMP := $(VENV)/.lint-installed-stamp
$(LINT_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,lint]'
	touch $@

lint: $(LINT_STAMP)
	@status=0; \
	$(BIN)/ruff check || status=1; \
	$(BIN)/ruff format --check --output-format concise || status=1; \
	$(BIN)/mypy || status=1; \
	exit $$status

# Known vulnerabilities in the resolved dependencies of .venv: exit 1 on any (CI runs this).
# pip-audit is installed beside the venv, not into it, so that the audit covers exactly what
# poisonguard installs; poisonguard itself (editable, not on PyPI) is skipped. A package the
# vulnerability service cannot answer for is listed as skipped; AUDIT_FLAGS=--strict fails on it.
AUDIT_TOOLS := $(VENV)/audit-tools
AUDIT_FLAGS ?=
$(AUDIT_TOOLS)/.installed-stamp: $(STAMP)
	rm -rf $(AUDIT_TOOLS)
	$(BIN)/python -m pip install --quiet --target $(AUDIT_TOOLS) 'pip-audit>=2.7'
	touch $@

audit: $(AUDIT_TOOLS)/.installed-stamp
	PYTHONPATH=$(AUDIT_TOOLS) $(BIN)/python -m pip_audit --progress-spinner off --desc on --skip-editable \
		--path "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" $(AUDIT_FLAGS)

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	$(BIN)/python benchmarks/detection_core.py
	$(BIN)/python benchmarks/scan_wall_time.py

clean:
	rm -rf .poisonguard-demo demo-output .pytest_cache
