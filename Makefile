# One command each: install, run the local stack, test.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch (a few hundred MB) unless TORCH_SPEC says otherwise (e.g. TORCH_SPEC=torch for CUDA).
TORCH_SPEC ?= torch==2.13.0+cpu
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: install up test test-fast bench clean

install:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install "$(TORCH_SPEC)" || $(BIN)/pip install "$(TORCH_SPEC)" --extra-index-url $(TORCH_INDEX)
	$(BIN)/pip install -e '.[test,eval]'
	# Only the CLIP BPE merges file is used from open_clip (the tests rebuild the real tokenizer from it);
	# --no-deps keeps it from pulling torchvision and another torch.
	$(BIN)/pip install --no-deps 'open_clip_torch>=2.24'

up:
	$(BIN)/withsense up

test:
	$(BIN)/python -m pytest

test-fast:
	$(BIN)/python -m pytest -m "not slow"

clean:
	rm -rf var .cache .pytest_cache
