#!/usr/bin/env bash
# Build llama.cpp's own HTTP server (llama-server) from the llama-cpp-python sdist that scripts/install.sh keeps,
# with the same flags as its wheel (portable, AMX off: llama.cpp issue 20824), into $CACHE/llama-server-VERSION.
# Not part of the set-up (several minutes on 2 cores); tests/integration/test_llama_server.py runs against it
# when PARITY_LLAMA_SERVER names the binary:
#
#   bash scripts/build_llama_server.sh
#   PARITY_LLAMA_SERVER=~/.cache/parity/llama-server-0.3.36/llama-server python -m pytest tests/integration/test_llama_server.py
set -euo pipefail

LLAMA_CPP_VERSION=0.3.36
CACHE=${PARITY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/parity}
SDIST="$CACHE/sdist/llama_cpp_python-$LLAMA_CPP_VERSION.tar.gz"
TARGET="$CACHE/llama-server-$LLAMA_CPP_VERSION"
if [ -x "$TARGET/llama-server" ]; then
  echo "==> $TARGET/llama-server is built; keeping it"
  exit 0
fi
if [ ! -f "$SDIST" ]; then
  echo "parity: no $SDIST: run scripts/install.sh (make install) first" >&2
  exit 2
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tar -xzf "$SDIST" -C "$work"
source="$work/llama_cpp_python-$LLAMA_CPP_VERSION/vendor/llama.cpp"
echo "==> building llama-server from $SDIST (several minutes on 2 cores)"
cmake -S "$source" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF -DGGML_AMX_TILE=OFF \
  -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DBUILD_SHARED_LIBS=OFF >/dev/null
cmake --build "$work/build" --target llama-server -j "$(nproc 2>/dev/null || echo 2)" >/dev/null
mkdir -p "$TARGET"
cp "$work/build/bin/llama-server" "$TARGET/llama-server"
echo "==> $TARGET/llama-server"
