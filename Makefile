# The two set-up commands: `make demo` and `make test` install everything, then run.
PYTHON ?= python3

.PHONY: install demo test
install:
	PYTHON="$(PYTHON)" bash scripts/install.sh

demo: install
	$(PYTHON) -m parity check

# PARITY_STRICT=1: a real peer that is missing fails the run instead of skipping its tests.
test: install
	PARITY_STRICT=1 $(PYTHON) -m pytest -q
