"""CTranslate2 (a C++ inference engine) as a parity candidate: its Generator's logits at every position, handed
over as a function of token ids.

CTranslate2 converts a transformers model with its own converter and runs it in its own kernels. It shows
no intermediate tensor, so parity compares its logits (its layers are "not checked", with the reason) and,
where they part, runs the reference again under each config setting a converter may read otherwise.

    parity check MODEL_DIR examples/ctranslate2_candidate.py:converted        # converted here by its converter
    CT2_MODEL=ct2_dir parity check MODEL_DIR examples/ctranslate2_candidate.py:generator   # converted before

`CT2_COMPUTE_TYPE` picks its compute type (float32 by default; int8_float32, int8, int16 quantize its
weights, and int8 its activations too, which parity's float32 tolerances do not model). CTranslate2's
converter reads the tokenizer too: MODEL_DIR needs one.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import numpy as np


def generator(model_dir):
    """The CTranslate2 model in $CT2_MODEL (converted before), as a function of token ids."""
    path = os.environ.get("CT2_MODEL")
    if not path:
        raise SystemExit("set CT2_MODEL to a directory written by ct2-transformers-converter")
    return _logits_of(path)


def converted(model_dir):
    """MODEL_DIR converted by CTranslate2's own transformers converter (into a temporary directory, removed at
    exit), as a function of token ids."""
    from ctranslate2.converters import TransformersConverter

    output = tempfile.mkdtemp(prefix="parity-ct2-")
    atexit.register(shutil.rmtree, output, ignore_errors=True)
    TransformersConverter(str(model_dir)).convert(output, force=True)
    return _logits_of(output)


def _logits_of(path: str):
    import ctranslate2

    compute_type = os.environ.get("CT2_COMPUTE_TYPE", "float32")
    model = ctranslate2.Generator(path, device="cpu", compute_type=compute_type)

    def forward(input_ids):                       # input_ids: (1, T) int64
        logits = model.forward_batch(input_ids.tolist())
        return np.array(logits)                   # (1, T, V) float32
    if compute_type == "float32":
        forward.parity_dtype = "float32"          # its float32 kernels: parity calibrates float32's noise
    return forward
