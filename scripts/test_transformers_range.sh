#!/usr/bin/env bash
# The suite's transformers tests against each end of the supported range, beside the installed (pinned) one.
#
#   PYTHON              interpreter whose site-packages hold parity and its peers (default: python3)
#   TRANSFORMERS_RANGE  versions to test (default: the oldest and the newest supported)
#   PARITY_CACHE        where each version's virtual environment is kept (default: ~/.cache/parity)
#   TEST_JOBS           test processes (pytest-xdist; default: 2)
#
# Each version gets a virtual environment that sees the interpreter's packages (--system-site-packages)
# and holds only that transformers and what it needs, so the rest (torch, llama-cpp-python, parity
# itself, installed editable) is the one the main suite ran with. A version equal to the installed one
# is skipped: the main suite ran on it.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
RANGE=${TRANSFORMERS_RANGE:-"5.16.1 5.25.0"}
CACHE=${PARITY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/parity}
# The tests that exercise transformers' API: capture, structure discovery, attention recording, decoding
# through the cache (the 5.24 rename), placement, the from-scratch port protocol, and the sanity suite.
TESTS="tests/capture/hf tests/capture/torch tests/capture/test_candidates.py tests/sanity
       tests/integration/test_decoding.py tests/integration/test_family_ports.py tests/integration/test_check_not_checked.py
       tests/integration/test_transformers_architectures.py"

installed=$("$PYTHON" -c "import transformers; print(transformers.__version__)")
for version in $RANGE; do
  if [ "$version" = "$installed" ]; then
    echo "==> transformers $version is the installed one: the main suite ran on it"
    continue
  fi
  venv="$CACHE/venv-transformers-$version"
  if ! "$venv/bin/python" -c "import transformers, sys; sys.exit(transformers.__version__ != '$version')" 2>/dev/null; then
    echo "==> making $venv with transformers $version"
    rm -rf "$venv"
    "$PYTHON" -m venv --system-site-packages "$venv"
    "$venv/bin/python" -m pip install --disable-pip-version-check -q "transformers==$version"
  fi
  echo "==> the transformers tests against transformers $version"
  # shellcheck disable=SC2086
  PARITY_STRICT=1 "$venv/bin/python" -m pytest -q -n "${TEST_JOBS:-2}" --dist loadfile $TESTS
done
