.PHONY: setup test run demo

# `make test` is the one test command (README, .ci/run); it sets everything up first.
setup:
	bash scripts/setup.sh

test: setup
	.venv/bin/python -m pytest $(PYTEST_ARGS)

run: setup
	bash scripts/run_default.sh

demo: setup
	.venv/bin/mmkit demo vit
