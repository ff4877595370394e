.PHONY: setup test run demo

# `make test` is the one test command (README, .ci/run); it sets everything up first.
setup:
	bash scripts/setup.sh

# Two workers (pytest-xdist), whole files each, in the order tests/conftest.py gives (the longest first; xdist would
# otherwise start the files with the most tests first): the machines this is sized for have 2 cores
# (TEST_WORKERS=0: one process, as plain `pytest` runs).
TEST_WORKERS ?= 2

test: setup
	.venv/bin/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

run: setup
	bash scripts/run_default.sh

demo: setup
	.venv/bin/mmkit demo vit
