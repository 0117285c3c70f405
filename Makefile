# The two set-up commands of the README, and the longer runs that are commands, not tests.
#   make run   - virtual environment, install, a local 6-brick cluster, a short demo
#   make test  - virtual environment, install, the whole test suite, mypy
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install run demo down status test unit typecheck bench clean

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/dds-admin local up
	$(BIN)/python -m dds.tools.demo --local

demo: install
	$(BIN)/python -m dds.tools.demo --local

down: install
	$(BIN)/dds-admin local down

status: install
	$(BIN)/dds-admin local status

test: install
	$(BIN)/python -m pytest -q tests
	$(BIN)/python -m mypy dds bricks lib tools

unit: install
	$(BIN)/python -m pytest -q tests/unit tests/protocol

typecheck: install
	$(BIN)/python -m mypy dds bricks lib tools

bench: install
	$(BIN)/dds-admin bench --local

clean:
	rm -rf $(VENV) build *.egg-info .dds-local
