# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# Both create .venv when it is missing.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.faceprobe-installed
# torch/torchvision are pinned here (pyproject keeps a plain range) so a fresh venv gets the
# releases this project is tested with instead of whatever is newest.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
export KERAS_BACKEND := torch
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: venv test test-slow demo bench lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH_SPEC)
	$(BIN)/pip install -q -e '.[dlib,serve,ray,dev]'
	$(BIN)/pip install -q --no-deps facenet-pytorch==2.6.0
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

demo: $(STAMP)
	$(BIN)/faceprobe demo --out reports/demo

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

lint: $(STAMP)
	$(BIN)/ruff check faceprobe tests bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
