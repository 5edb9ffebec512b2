# `make demo` and `make test` set everything up themselves (scripts/setup.sh is idempotent).
PY := .venv/bin/python

.PHONY: setup demo test test-fast bench clean

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/curate run jobs/demo.yaml --fresh

test: setup
	$(PY) -m pytest -q

# Quick iteration: everything but the tests marked `slow` (llama.cpp/Gemma, ray job submit, neural index).
test-fast: setup
	$(PY) -m pytest -q -m "not slow"

bench: setup
	$(PY) benchmarks/perplexity.py

clean:
	rm -rf out .pytest_cache
