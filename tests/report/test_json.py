import json

import numpy as np

from parity.core.compare import compare
from parity.core.trace import make_trace
from parity.report.json import SCHEMA, dumps, to_dict

RNG = np.random.default_rng(3)
TENSORS = {
    "embed": RNG.standard_normal((3, 4)),
    "layers.0.q": RNG.standard_normal((3, 4)),
    "layers.0.out": RNG.standard_normal((3, 4)),
    "logits": RNG.standard_normal((3, 6)),
}


def failing_comparison():
    candidate = dict(TENSORS)
    candidate["layers.0.out"] = TENSORS["layers.0.out"].copy()
    candidate["layers.0.out"][1, 2] = np.nan
    candidate["layers.0.k"] = np.zeros((3, 4))
    del candidate["layers.0.q"]
    return compare(make_trace(TENSORS, {"arch": "llama", "tokens": [1, 2, 3]}), make_trace(candidate, {"producer": "port"}))


def test_report_has_the_documented_top_level_schema():
    report = to_dict(failing_comparison())
    assert set(report) == {"schema", "verdict", "calibrated", "first_divergence", "origin", "summary", "checkpoints",
                           "position_matrix", "missing", "extra", "raw", "replay", "decode", "generation", "not_checked", "diagnoses", "notes",
                           "reference", "candidate"}
    assert report["schema"] == SCHEMA and report["verdict"] == "fail" and report["calibrated"] is False
    divergence = report["first_divergence"]
    assert {k: divergence[k] for k in ("checkpoint", "layer", "kind", "position")} == {
        "checkpoint": "layers.0.out", "layer": 0, "kind": "out", "position": 1}
    assert len(divergence["per_position"]) == 3 and divergence["per_head"] == []
    assert report["position_matrix"]["checkpoint"] == "layers.{i}.out" and len(report["position_matrix"]["rel_l2"]) == 1
    assert report["missing"] == ["layers.0.q"] and report["extra"] == ["layers.0.k"]
    assert report["diagnoses"] == [] and report["reference"]["tokens"] == [1, 2, 3]
    assert report["candidate"]["producer"] == "port"
    assert report["summary"] == {"compared": 3, "passed": 2, "failed": 1, "not_comparable": 0, "missing": 1, "extra": 1}


def test_checkpoint_entries_carry_metrics_tolerance_and_shapes_in_flow_order():
    report = to_dict(failing_comparison())
    assert [c["name"] for c in report["checkpoints"]] == ["embed", "layers.0.out", "logits"]
    entry = report["checkpoints"][1]
    assert set(entry) == {"name", "layer", "kind", "status", "metrics", "tolerance", "shape_ref", "shape_cand", "layout", "reason",
                          "introduced_rel_l2", "inherited_rel_l2"}
    assert entry["status"] == "fail" and entry["shape_ref"] == [3, 4] and entry["shape_cand"] == [3, 4]
    assert set(entry["metrics"]) == {"max_abs", "mean_abs", "rel_l2", "cosine", "max_rel", "mismatched", "numel", "nan_ref",
                                     "nan_cand", "inf_ref", "inf_cand", "worst_index", "worst_position", "position_rel_l2",
                                     "channel_position_rel_l2", "position_weighted_rel_l2"}
    assert set(entry["tolerance"]) == {"atol", "rtol", "basis", "max_rel_l2", "max_position_rel_l2",
                                         "max_channel_position_rel_l2", "max_position_weighted_rel_l2", "noise_rel_l2"}


def test_nonfinite_metrics_become_null_so_the_output_is_strict_json():
    text = dumps(failing_comparison())
    parsed = json.loads(text, parse_constant=lambda name: (_ for _ in ()).throw(ValueError(name)))
    metrics = parsed["checkpoints"][1]["metrics"]
    assert metrics["max_abs"] is None and metrics["nan_cand"] == 1


def test_passing_report():
    report = to_dict(compare(make_trace(TENSORS), make_trace(TENSORS)))
    assert report["verdict"] == "pass" and report["first_divergence"] is None
