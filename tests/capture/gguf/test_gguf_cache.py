"""The dequantized copy of a GGUF: made once, reused, keyed by the file, never a reason to fail."""

import os
import shutil

import numpy as np
import pytest

from parity.capture.gguf import cache as gguf_cache

pytestmark = pytest.mark.slow


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PARITY_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("PARITY_NO_CACHE", raising=False)
    return tmp_path / "cache" / "dequantized"


def test_the_second_load_reads_the_cached_copy_and_computes_the_same(cache, smollm2_gguf, smollm2_reference):
    from parity.capture.hf.model import load_model

    assert gguf_cache.cached_directory(smollm2_gguf) is None
    stored = gguf_cache.store(smollm2_gguf, smollm2_reference.model, lambda: smollm2_reference.tokenizer)
    assert stored == gguf_cache.cached_directory(smollm2_gguf)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(os.listdir(stored))
    assert not [name for name in os.listdir(cache) if name.startswith(".parity-tmp-")]

    reloaded = load_model(smollm2_gguf)
    prompt = "The capital of France is"
    assert reloaded.tokenize(prompt) == smollm2_reference.tokenize(prompt)
    tokens = smollm2_reference.tokenize(prompt)
    np.testing.assert_array_equal(reloaded.logits(tokens), smollm2_reference.logits(tokens))


def test_a_changed_file_gets_its_own_copy(cache, smollm2_gguf, tmp_path):
    copy = tmp_path / "model.gguf"
    shutil.copyfile(smollm2_gguf, copy)
    before = gguf_cache._key(copy)
    os.utime(copy, ns=(1, 1))
    assert gguf_cache._key(copy) != before
    assert gguf_cache._key(copy) != gguf_cache._key(smollm2_gguf)


def test_the_cache_can_be_turned_off_and_an_unwritable_one_is_skipped(cache, smollm2_gguf, smollm2_reference,
                                                                      monkeypatch, tmp_path):
    monkeypatch.setenv("PARITY_NO_CACHE", "1")
    assert gguf_cache.store(smollm2_gguf, smollm2_reference.model, lambda: smollm2_reference.tokenizer) is None
    assert gguf_cache.cached_directory(smollm2_gguf) is None
    monkeypatch.delenv("PARITY_NO_CACHE")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("PARITY_CACHE", str(blocker))
    assert gguf_cache.store(smollm2_gguf, smollm2_reference.model, lambda: smollm2_reference.tokenizer) is None
