"""The dequantized copy of a GGUF: made once, reused, keyed by the file's content, checked on every read,
rebuilt (with a note) when anything in it changed, never a reason to fail.

One test per way the cache was once trusted when it was wrong (issue 24): each time the run that reads
the cache must compute what a run without the cache computes.
"""

import json
import os
import shutil

import numpy as np
import pytest

import gguf_models
from parity.capture.gguf import cache as gguf_cache
from parity.capture.gguf import cache_entry

pytest.importorskip("gguf")
TOKENS = [1, 5, 9, 3, 7]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PARITY_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("PARITY_NO_CACHE", raising=False)
    return tmp_path / "cache" / "dequantized"


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory):
    """Two tiny Llama GGUFs with other weights (copies: the tests change them)."""
    directory = tmp_path_factory.mktemp("ggufs")
    for name, seed in (("model.gguf", 0), ("other.gguf", 1)):
        shutil.copyfile(gguf_models.gguf("llama", "f32", seed=seed), directory / name)
    return directory


@pytest.fixture
def model(ggufs, tmp_path):
    path = tmp_path / "model.gguf"
    shutil.copyfile(ggufs / "model.gguf", path)
    return path


def logits(path, monkeypatch=None, *, cached=True):
    from parity.capture.hf.model import load_model

    if not cached:
        monkeypatch.setenv("PARITY_NO_CACHE", "1")
    try:
        return load_model(path).logits(TOKENS)
    finally:
        if not cached:
            monkeypatch.delenv("PARITY_NO_CACHE")


def entry_of(cache):
    (entry,) = [path for path in cache.iterdir() if path.name != gguf_cache.IDENTITIES]
    return entry


def test_the_second_load_reads_the_verified_copy_and_computes_the_same(cache, model, capsys):
    first = logits(model)
    entry = entry_of(cache)
    manifest = json.loads((entry / cache_entry.MANIFEST).read_text())
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(manifest["files"])
    assert manifest["gguf"]["sha256"] == gguf_cache._content_sha256(model)
    assert not [name for name in os.listdir(cache) if name.startswith(".parity-tmp-")]
    assert gguf_cache.cached_directory(model) == entry
    np.testing.assert_array_equal(logits(model), first)
    assert "note" not in capsys.readouterr().err


def _rebuilt_with_a_note(cache, model, monkeypatch, capsys, says):
    """The damaged entry is noticed, removed and rebuilt: the run computes what an uncached one does."""
    expected = logits(model, monkeypatch, cached=False)
    got = logits(model)
    err = capsys.readouterr().err
    assert "parity: note: the cached copy" in err and says in err and "read from the GGUF again" in err, err
    assert err.count("parity: note:") == 1, err
    np.testing.assert_array_equal(got, expected)
    rebuilt = cache / gguf_cache._entry_name(model)
    assert cache_entry.damage(rebuilt) is None and not rebuilt.is_symlink()   # rebuilt whole
    return err


def test_weights_changed_in_the_cache(cache, model, monkeypatch, capsys):
    logits(model)
    weights = entry_of(cache) / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-64:] = bytes(64)   # the end of the last tensor
    weights.write_bytes(bytes(data))
    _rebuilt_with_a_note(cache, model, monkeypatch, capsys, "model.safetensors does not hash to what was written")


@pytest.mark.parametrize("field, value", [("num_hidden_layers", 2), ("rms_norm_eps", 1e-2),
                                          ("rope_parameters", {"rope_type": "default", "rope_theta": 10.0})])
def test_config_json_edited(cache, model, monkeypatch, capsys, field, value):
    logits(model)
    config_path = entry_of(cache) / "config.json"
    config = json.loads(config_path.read_text())
    config[field] = value
    config_path.write_text(json.dumps(config))
    _rebuilt_with_a_note(cache, model, monkeypatch, capsys, "config.json")


def test_model_safetensors_replaced_by_a_link_to_another_model(cache, model, ggufs, monkeypatch, capsys):
    logits(ggufs / "other.gguf")
    other_entry = entry_of(cache)
    logits(model)
    entry = gguf_cache.cached_directory(model)
    (entry / "model.safetensors").unlink()
    (entry / "model.safetensors").symlink_to(other_entry / "model.safetensors")
    _rebuilt_with_a_note(cache, model, monkeypatch, capsys, "model.safetensors is a symbolic link")


def test_the_entry_a_link_to_another_directory(cache, model, ggufs, monkeypatch, capsys, tmp_path):
    logits(ggufs / "other.gguf")
    elsewhere = tmp_path / "elsewhere"
    shutil.move(entry_of(cache), elsewhere)   # another model's whole, valid-looking copy
    name = gguf_cache._entry_name(model)
    (cache / name).symlink_to(elsewhere, target_is_directory=True)
    _rebuilt_with_a_note(cache, model, monkeypatch, capsys, "it is a symbolic link")
    assert (elsewhere / "model.safetensors").is_file()   # the link was removed, never followed


def test_the_ggufs_weights_changed_with_size_and_mtime_kept(cache, model, monkeypatch, capsys):
    before = logits(model)
    status = os.stat(model)
    data = bytearray(model.read_bytes())
    data[-256:] = np.full(64, 0.5, np.float32).tobytes()   # the last tensor's end (F32 weights)
    model.write_bytes(bytes(data))
    os.utime(model, ns=(status.st_atime_ns, status.st_mtime_ns))
    assert (os.stat(model).st_size, os.stat(model).st_mtime_ns) == (status.st_size, status.st_mtime_ns)
    expected = logits(model, monkeypatch, cached=False)
    assert not np.array_equal(expected, before)
    np.testing.assert_array_equal(logits(model), expected)
    assert len([path for path in cache.iterdir() if path.name != gguf_cache.IDENTITIES]) == 2   # one per content
    assert "note" not in capsys.readouterr().err


def test_tokenizer_files_swapped(cache, model, ggufs, monkeypatch, capsys):
    from parity.capture.hf.model import load_tokenizer

    logits(model)
    entry = entry_of(cache)
    tokenizer = json.loads((entry / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    first, second = list(vocab)[3:5]
    vocab[first], vocab[second] = vocab[second], vocab[first]   # two words' ids swapped
    (entry / "tokenizer.json").write_text(json.dumps(tokenizer))
    _rebuilt_with_a_note(cache, model, monkeypatch, capsys, "tokenizer.json")
    text = f"{first} {second}"
    monkeypatch.setenv("PARITY_NO_CACHE", "1")
    uncached = load_tokenizer(model)(text)["input_ids"]
    monkeypatch.delenv("PARITY_NO_CACHE")
    assert load_tokenizer(model)(text)["input_ids"] == uncached


@pytest.mark.parametrize("damage, says", [
    ("fifo", "model.safetensors is not a regular file"),
    ("extra_file", "'pytorch_model.bin', which its manifest does not list"),
    ("manifest_edited", "parity-cache.json is not JSON"),
    ("manifest_gone", "parity-cache.json is missing"),
    ("file_gone", "config.json is missing"),
])
def test_other_damage_is_named_and_rebuilt(cache, model, monkeypatch, capsys, damage, says):
    logits(model)
    entry = entry_of(cache)
    if damage == "fifo":
        (entry / "model.safetensors").unlink()
        os.mkfifo(entry / "model.safetensors")
    elif damage == "extra_file":
        (entry / "pytorch_model.bin").write_bytes(b"PK\x03\x04 a pickle transformers would load")
    elif damage == "manifest_edited":
        (entry / cache_entry.MANIFEST).write_text("{")
    elif damage == "manifest_gone":
        (entry / cache_entry.MANIFEST).unlink()
    else:
        (entry / "config.json").unlink()
    _rebuilt_with_a_note(cache, model, monkeypatch, capsys, says)


def test_a_damaged_digest_index_is_recomputed(cache, model):
    logits(model)
    for record in (cache / gguf_cache.IDENTITIES).iterdir():
        document = json.loads(record.read_text())
        record.write_text(json.dumps({**document, "sha256": "0" * 63 + "x"}))
    from parity.capture.gguf import digest

    digest._MEMO.clear()
    assert gguf_cache.cached_directory(model) == entry_of(cache)


def test_the_cache_can_be_turned_off_and_an_unwritable_one_is_skipped(cache, model, monkeypatch, tmp_path):
    monkeypatch.setenv("PARITY_NO_CACHE", "1")
    logits(model)
    assert not cache.exists() and gguf_cache.cached_directory(model) is None
    monkeypatch.delenv("PARITY_NO_CACHE")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("PARITY_CACHE", str(blocker))
    logits(model)   # runs without the cache
    assert gguf_cache.cached_directory(model) is None


def test_verify_and_clear(cache, model, ggufs, capsys):
    from parity.cli import main

    logits(model)
    logits(ggufs / "other.gguf")
    assert main(["cache", "verify"]) == 0
    out = capsys.readouterr().out
    assert out.count("  whole") == 2 and "2 entries, all whole" in out, out
    damaged = sorted(path for path in cache.iterdir() if path.name != gguf_cache.IDENTITIES)[0]
    (damaged / "config.json").write_text("{}")
    (cache / "keep-me.txt").write_text("not parity's")
    assert main(["cache", "verify"]) == 1
    out = capsys.readouterr().out
    assert "config.json has" in out and "1 of 2 entries damaged" in out, out
    assert main(["cache", "clear"]) == 0
    out = capsys.readouterr().out
    assert "removed 2 entries" in out and "keep-me.txt" in out, out
    assert sorted(os.listdir(cache)) == ["keep-me.txt"]
    assert main(["cache", "verify"]) == 0
    assert "no entries" in capsys.readouterr().out


@pytest.mark.slow
def test_the_real_smollm2_copy_round_trips(cache, smollm2_gguf, smollm2_reference):
    from parity.capture.hf.model import load_model

    stored = gguf_cache.store(smollm2_gguf, smollm2_reference.model, lambda: smollm2_reference.tokenizer)
    assert stored == gguf_cache.cached_directory(smollm2_gguf)
    reloaded = load_model(smollm2_gguf)
    prompt = "The capital of France is"
    assert reloaded.tokenize(prompt) == smollm2_reference.tokenize(prompt)
    tokens = smollm2_reference.tokenize(prompt)
    np.testing.assert_array_equal(reloaded.logits(tokens), smollm2_reference.logits(tokens))
