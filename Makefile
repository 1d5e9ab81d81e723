# The two set-up commands: `make demo` and `make test` install everything, then run.
PYTHON ?= python3

.PHONY: install demo test
install:
	PYTHON="$(PYTHON)" bash scripts/install.sh

demo: install
	$(PYTHON) -m parity check

# PARITY_STRICT=1: a real peer that is missing fails the run instead of skipping its tests.
# TEST_JOBS processes (pytest-xdist), a test file to each at a time so that a file's module fixtures are built once.
# Then the transformers tests again against each end of the supported range (scripts/test_transformers_range.sh).
TEST_JOBS ?= 2
test: install
	PARITY_STRICT=1 $(PYTHON) -m pytest -q --durations=15 -n $(TEST_JOBS) --dist loadfile
	PYTHON="$(PYTHON)" TEST_JOBS="$(TEST_JOBS)" bash scripts/test_transformers_range.sh
