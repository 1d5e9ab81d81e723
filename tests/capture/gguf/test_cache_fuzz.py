"""Fuzzed damage to a cached copy: whatever is done to an entry (bytes flipped, files cut, grown,
swapped, replaced by links or FIFOs, added, removed; the manifest or the digest index edited), the next
load computes what a load without the cache computes, says so in at most one note, and leaves a whole
entry behind. Never an exception, never a silent use of a changed file."""

import json
import os
import random
import shutil

import numpy as np
import pytest

import gguf_corpus
from parity.capture.gguf import cache as gguf_cache
from parity.capture.gguf import cache_entry

pytest.importorskip("gguf")
COUNT = 25
TOKENS = [1, 5, 9, 3]


def _damage(entry, rng: random.Random, elsewhere) -> str:
    if entry.is_symlink():   # already a link to the pristine copy: nothing more is done through it
        return "-"
    files = sorted(path for path in entry.iterdir())
    target = rng.choice(files)
    choice = rng.randrange(10)
    if choice == 0:
        data = bytearray(target.read_bytes())
        if data:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        target.write_bytes(bytes(data))
    elif choice == 1:
        os.truncate(target, rng.randrange(max(target.stat().st_size, 1)))
    elif choice == 2:
        with open(target, "ab") as file:
            file.write(rng.randbytes(rng.randint(1, 64)))
    elif choice == 3 and len(files) > 1:
        other = rng.choice([path for path in files if path != target])
        swap = entry / ".swap"
        target.rename(swap)
        other.rename(target)
        swap.rename(other)
    elif choice == 4:
        target.unlink()
        target.symlink_to(elsewhere / target.name if (elsewhere / target.name).exists() else "/etc/hostname")
    elif choice == 5:
        target.unlink()
        os.mkfifo(target)
    elif choice == 6:
        (entry / rng.choice(("pytorch_model.bin", "model.safetensors.index.json", "extra.txt"))).write_bytes(b"{}")
    elif choice == 7:
        target.unlink()
    elif choice == 8:
        manifest = entry / cache_entry.MANIFEST
        document = json.loads(manifest.read_text())
        name = rng.choice(list(document["files"]))
        document["files"][name][rng.choice(("size", "sha256"))] = rng.choice((0, "0" * 64, -1, None))
        manifest.write_text(json.dumps(document))
    else:
        shutil.rmtree(entry)
        entry.symlink_to(elsewhere, target_is_directory=True)
    return f"{choice} {target.name}"


def test_damaged_entries_are_noticed_rebuilt_and_never_used(tmp_path, monkeypatch, capfd):
    from parity.capture.hf.model import load_model

    path = tmp_path / "model.gguf"
    path.write_bytes(gguf_corpus.SEED.read_bytes())
    monkeypatch.setenv("PARITY_NO_CACHE", "1")
    expected = load_model(path).logits(TOKENS)
    monkeypatch.setenv("PARITY_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("PARITY_NO_CACHE")
    load_model(path)                                      # stores the entry
    entry = tmp_path / "cache" / "dequantized" / gguf_cache._entry_name(path)
    pristine = tmp_path / "pristine"
    shutil.copytree(entry, pristine)
    capfd.readouterr()
    rng = random.Random(24)
    for index in range(COUNT):
        if entry.is_symlink():
            entry.unlink()
        shutil.rmtree(entry, ignore_errors=True)
        shutil.copytree(pristine, entry)
        done = [_damage(entry, rng, pristine) for _ in range(rng.randint(1, 2))]
        np.testing.assert_array_equal(load_model(path).logits(TOKENS), expected, err_msg=str(done))
        err = capfd.readouterr().err
        assert err.count("parity: note:") <= 1 and "Traceback" not in err, (done, err)
        assert cache_entry.damage(entry) is None and not entry.is_symlink(), done
        assert (pristine / "model.safetensors").is_file()   # a link into it was never followed to change it
