# Two commands on a fresh machine: `make up` (the local stack) and `make test` (the suite). Each first creates and
# fills the virtual environment when it is missing or older than pyproject.toml; `make install` forces that step.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Written by the install recipe once everything is in: the environment is as new as this file.
STAMP := $(VENV)/.installed
# The CPU build of torch (a few hundred MB) unless TORCH_SPEC says otherwise (e.g. TORCH_SPEC=torch for CUDA).
TORCH_SPEC ?= torch==2.13.0+cpu
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
# Extra arguments for pytest, e.g. `make test PYTEST_ARGS="tests/test_policy.py -q"`.
PYTEST_ARGS ?=

.PHONY: install up test test-open-clip test-fast lint clean

# Missing, or older than pyproject.toml: (re)install. A failed step leaves no stamp, so the next command retries.
$(STAMP): pyproject.toml
	test -f $(VENV)/pyvenv.cfg || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install "$(TORCH_SPEC)" || $(BIN)/python -m pip install "$(TORCH_SPEC)" --extra-index-url $(TORCH_INDEX)
	$(BIN)/python -m pip install -e '.[test,eval,dev]'
	# Only the CLIP BPE merges file is used from open_clip (the tests rebuild the real tokenizer from it);
	# --no-deps keeps it from pulling torchvision and another torch.
	$(BIN)/python -m pip install --no-deps 'open_clip_torch>=2.24'
	touch $@

install:
	rm -f $(STAMP)
	$(MAKE) --no-print-directory $(STAMP)

up: $(STAMP)
	$(BIN)/withsense up

# The open_clip cases need torchvision, which has no build for the CPU torch above: a second environment with
# torch 2.14.1 + torchvision 0.29.1 (a CUDA build that runs on the CPU; ~7 GB, from this machine's disk where
# pip finds it, else downloaded) runs them, with models cached apart from the first environment's.
OC_VENV ?= .venv-openclip
OC_BIN := $(OC_VENV)/bin
OC_STAMP := $(OC_VENV)/.installed
OC_TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
OC_CACHE := $(or $(WITHSENSE_TEST_CACHE),$(CURDIR)/.cache/test-models)-openclip

$(OC_STAMP): pyproject.toml
	test -f $(OC_VENV)/pyvenv.cfg || $(PYTHON) -m venv $(OC_VENV)
	$(OC_BIN)/python -m pip install --upgrade pip
	$(OC_BIN)/python -m pip install $(OC_TORCH_SPEC)
	$(OC_BIN)/python -m pip install -e '.[test]' 'open_clip_torch>=2.24'
	touch $@

# The whole suite in the first environment, then the open_clip cases in the second (only for the whole suite:
# a PYTEST_ARGS selection runs in the first alone; `make test-open-clip` runs the second alone).
test: $(STAMP)
	$(BIN)/python -m pytest -m "not open_clip" $(PYTEST_ARGS)
	$(if $(strip $(PYTEST_ARGS)),,$(MAKE) --no-print-directory test-open-clip)

test-open-clip: $(OC_STAMP)
	WITHSENSE_TEST_CACHE=$(OC_CACHE) $(OC_BIN)/python -m pytest -m open_clip tests/test_model_families.py

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not open_clip" $(PYTEST_ARGS)

# Lint, format check, types, and the import contracts of pyproject.toml ([tool.importlinter]: the layers).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

clean:
	rm -rf var .cache .pytest_cache .mypy_cache .ruff_cache .import_linter_cache
