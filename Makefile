# The two set-up commands: `make demo` and `make test` install everything, then run.
PYTHON ?= python3

.PHONY: install demo test
install:
	PYTHON="$(PYTHON)" bash scripts/install.sh

demo: install
	$(PYTHON) -m parity check

# PARITY_STRICT=1: a real peer that is missing fails the run instead of skipping its tests.
# Then the transformers tests again against each end of the supported range (scripts/test_transformers_range.sh).
test: install
	PARITY_STRICT=1 $(PYTHON) -m pytest -q --durations=15
	PYTHON="$(PYTHON)" bash scripts/test_transformers_range.sh
