# Two entry points that work on a fresh machine: `make demo` and `make test`.
# Each creates the virtual environment (.venv) and installs sceneforge first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sceneforge-installed

.PHONY: venv test lint pytest demo bench clean-venv

$(STAMP): pyproject.toml third_party/opencv_python_shim/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q ./third_party/opencv_python_shim
	$(PY) -m pip install -q -e '.[dev,learned,viewer]'
	$(PY) -m pip check
	touch $(STAMP)

venv: $(STAMP)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

pytest: venv
	$(VENV)/bin/pytest -q -p no:cacheprovider

test: lint pytest

demo: venv
	$(VENV)/bin/sceneforge demo

clean-venv:
	rm -rf $(VENV)
