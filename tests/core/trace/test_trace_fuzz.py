"""Fuzzing the trace readers with hypothesis: mutated traces of all three forms through
`parity compare REF CAND`. Each must give exit 2 with one line, or a result (0 or 1) with
nothing on stderr; any other exception fails the test. A few hundred examples, so the
suite stays fast; scripts/fuzz_traces.py runs 10,000+.
"""

import contextlib
import io
import random
import shutil
import tempfile
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import trace_corpus  # noqa: E402
import trace_fuzz  # noqa: E402
from parity.cli import main  # noqa: E402

SEEDS = trace_fuzz.seeds()
FUZZ = settings(max_examples=100, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return trace_corpus.write_reference(tmp_path_factory.mktemp("fuzz-reference"))


def check_input(reference: Path, data: bytes) -> None:
    directory = Path(tempfile.mkdtemp(prefix="parity-fuzz-"))
    try:
        candidate = trace_fuzz.materialize(data, directory)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["compare", str(reference), str(candidate)])  # any non-ParityError raises here
        lines = err.getvalue().splitlines()
        if code == 2:
            assert len(lines) == 1 and lines[0].startswith("parity: error: "), err.getvalue()
        else:
            assert code in (0, 1) and lines == [], err.getvalue()
    finally:
        shutil.rmtree(directory)


@FUZZ
@given(seed=st.sampled_from(SEEDS), mutation_seed=st.integers(0, 2**32 - 1))
def test_mutated_traces_of_every_form(reference, seed, mutation_seed):
    check_input(reference, trace_fuzz.mutate(seed, random.Random(mutation_seed)))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**65, 2**65) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
entries = st.fixed_dictionaries({}, optional={
    "dtype": st.sampled_from(["F32", "F16", "BF16", "I64", "BOOL", "C64", "F8_E4M3"]) | json_values,
    "shape": st.lists(st.integers(-2, 2**33), max_size=10) | json_values,
    "data_offsets": st.lists(st.integers(-1, 2**40), max_size=3) | json_values,
})
metadata = st.dictionaries(st.sampled_from(["format", "tokens", "config", "not_comparable", "producer", "dtype",
                                            "prompt", "x"]),
                           st.text(max_size=20) | json_values.map(lambda value: __import__("json").dumps(value)),
                           max_size=5)


@FUZZ
@given(header=st.dictionaries(st.sampled_from(["embed", "logits", "layers.0.q", "x"]), entries, max_size=3),
       meta=metadata, body=st.binary(max_size=300))
def test_safetensors_headers_of_any_shape(reference, header, meta, body):
    header = {**header, "__metadata__": meta}
    check_input(reference, b"\0" + trace_corpus.safetensors_bytes(header, body))


@FUZZ
@given(manifest=st.fixed_dictionaries({}, optional={
    "format": st.just(trace_corpus.FORMAT) | json_values,
    "tensors": st.lists(st.sampled_from(["embed", "logits", "../x", "/etc/passwd", ""]), max_size=3)
    | st.dictionaries(st.sampled_from(["embed", "logits"]),
                      st.sampled_from(["embed.npy", "logits.npy", "../../etc/passwd", "/proc/self/environ",
                                       "manifest.json", ".", ""]) | json_values, max_size=2)
    | json_values,
    "metadata": metadata | json_values,
    "dtypes": st.dictionaries(st.sampled_from(["embed", "logits"]), st.sampled_from(["bfloat16", "float8"])
                              | json_values, max_size=2) | json_values,
}), npy_header=st.text(st.characters(max_codepoint=255), max_size=80), mutation_seed=st.integers(0, 2**32 - 1))
def test_directory_manifests_and_npy_headers(reference, manifest, npy_header, mutation_seed):
    import json

    embed = trace_corpus.npy_bytes(trace_corpus.REFERENCE_TENSORS["embed"])
    logits = trace_corpus.npy_with_header(npy_header, b"\0" * 64)
    if mutation_seed % 2:
        embed = trace_fuzz.mutate(embed, random.Random(mutation_seed))
    check_input(reference, b"\2" + trace_fuzz.SEPARATOR.join([json.dumps(manifest).encode(), embed, logits]))
