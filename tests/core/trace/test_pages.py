"""Pages of mapped tensors handed back behind a chunked pass (core/trace/pages.py)."""

import numpy as np


def test_a_pass_over_mapped_tensors_hands_their_pages_back_behind_it(tmp_path):
    """measure_pair over a 128 MiB pair read from trace files: the same metrics as over arrays in memory, and
    the process does not keep the pages it has passed (core/trace/pages.py)."""
    import psutil

    from parity.core.metrics import NORMS_ONLY, channel_weighted_position_rel_l2, measure_pair, rel_l2
    from parity.core.trace import load_trace, make_trace, save_trace

    rows = np.random.default_rng(0).standard_normal((4096, 2048))                     # 64 MiB of float64
    held = {"reference": rows, "candidate": rows * (1 + 1e-3)}
    paths = {role: save_trace(make_trace({"logits": array}, {}), tmp_path / f"{role}.safetensors")
             for role, array in held.items()}
    traces = {role: load_trace(path) for role, path in paths.items()}
    mapped = {role: trace["logits"] for role, trace in traces.items()}
    process = psutil.Process()
    before = process.memory_info().rss
    measured = measure_pair(mapped["reference"], mapped["candidate"], NORMS_ONLY, token_axis=0)
    weighted = channel_weighted_position_rel_l2(mapped["reference"], mapped["candidate"], 0)
    flat = rel_l2(mapped["reference"], mapped["candidate"])
    grown = process.memory_info().rss - before
    assert grown < 80 << 20, f"the pass kept {grown >> 20} MiB of the 128 MiB it read"
    expected = measure_pair(held["reference"], held["candidate"], NORMS_ONLY, token_axis=0)
    assert measured.metrics == expected.metrics
    np.testing.assert_array_equal(measured.per_position, expected.per_position)
    assert weighted == channel_weighted_position_rel_l2(held["reference"], held["candidate"], 0)
    assert flat == rel_l2(held["reference"], held["candidate"])
