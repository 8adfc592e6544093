# Two entry points that work on a fresh machine: `make demo` and `make test`.
# Each creates the virtual environment (.venv) and installs sceneforge first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sceneforge-installed
# The nerfstudio extra lives in its own venv: nerfstudio 1.1.5 pins numpy<2 and viser 0.2.7.
# None of its dependencies declares opencv-python, so the shim is not needed there.
NS_VENV ?= .venv-ns
NS_STAMP := $(NS_VENV)/.sceneforge-installed

.PHONY: venv venv-ns test test-ns lint pytest demo bench clean-venv

$(STAMP): pyproject.toml third_party/opencv_python_shim/pyproject.toml \
		third_party/opencv_contrib_python_shim/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q ./third_party/opencv_python_shim ./third_party/opencv_contrib_python_shim
	$(PY) -m pip install -q -e '.[dev,learned,viewer,gaussians,human,style]'
	$(PY) -m pip check
	touch $(STAMP)

venv: $(STAMP)

# torch, torchvision, triton and the nvidia-* wheels (about 5.4 GB) are hard-linked from .venv
# rather than installed a second time: CI machines have run out of disk on the second copy.
$(NS_STAMP): pyproject.toml $(STAMP)
	$(PYTHON) -m venv $(NS_VENV)
	$(NS_VENV)/bin/python -m pip install -q --upgrade pip
	$(PY) .ci/share_packages.py $(NS_VENV) torch torchvision triton 'nvidia-*' 'cuda-*'
	$(NS_VENV)/bin/python -m pip install -q -e '.[nerfstudio,dev]'
	$(NS_VENV)/bin/python -m pip check
	touch $(NS_STAMP)

venv-ns: $(NS_STAMP)

# Only the nerfstudio-marked tests (tests/test_ns_*.py: ns-train plugins, dataparser), in the
# nerfstudio venv.
test-ns: venv-ns
	$(NS_VENV)/bin/pytest -q -p no:cacheprovider -m nerfstudio tests/test_ns_*.py

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# -rs lists every skipped test with its reason; tests/skip_summary.py then counts them by what
# is absent (../shared data, Chromium, CUDA, optional packages).
pytest: venv
	PYTHONPATH=tests$${PYTHONPATH:+:$$PYTHONPATH} $(VENV)/bin/pytest -q -rs -p no:cacheprovider -p skip_summary

test: lint pytest

demo: venv
	$(VENV)/bin/sceneforge demo

clean-venv:
	rm -rf $(VENV) $(NS_VENV)
