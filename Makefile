# Two commands set everything up on a fresh machine with Python 3.11 and make:
#   make demo   create .venv, install, scan every batch in data_samples/
#   make test   create/use the same .venv, run the test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/poisonguard demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	$(BIN)/python benchmarks/detection_core.py
	$(BIN)/python benchmarks/scan_wall_time.py

clean:
	rm -rf .poisonguard-demo demo-output .pytest_cache
