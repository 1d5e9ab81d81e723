from __future__ import annotations

import sys
from pathlib import Path

import pytest

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
    from parity.capture.hf import capture_hf

    return {family: capture_hf(directory, tokens=TOKENS) for family, directory in model_dirs.items()}
