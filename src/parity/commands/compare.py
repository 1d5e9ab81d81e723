"""parity compare: two traces, checkpoint by checkpoint, calibrated where the reference can be run again.

A reference trace parity captured names the model that made it (`model_path`); when the
candidate computes at a lower precision than the reference did, that model is captured once
more at the candidate's precision and every checkpoint is held to the noise it makes, as
`parity check` does. Otherwise --calibrate REF_LOWP gives that run.
"""

from __future__ import annotations

from pathlib import Path

from parity.commands import options
from parity.commands.output import finish, numeric_warnings_off
from parity.core.trace import Trace


def add_arguments(parser) -> None:
    parser.add_argument("reference", metavar="REF", help="the reference trace")
    parser.add_argument("candidate", metavar="CAND", nargs="+",
                        help="the candidate trace; or one trace per rank, or a shards manifest (.json)")
    parser.add_argument("--calibrate", metavar="REF_LOWP", help="the reference run at the candidate's precision")
    options.add_tolerances(parser)
    options.add_reports(parser)


def run(args) -> int:
    """Compare two traces checkpoint by checkpoint and report where they first part ways.

    REF and CAND are traces: .safetensors, .npz, or a directory of .npy files
    with manifest.json (see docs/trace-format.md). When CAND computed at a lower
    precision than REF and REF was captured by parity (it names its model), the
    model runs again at CAND's precision and each checkpoint is held to the noise
    that precision produces there, as check does; --calibrate REF_LOWP gives that
    run instead (the reference at the candidate's precision). A tensor-parallel
    run's CAND is its rank traces (rank0.safetensors rank1.safetensors ...) or a
    shards manifest listing them, merged by their declared shard layout; each
    rank's shard is compared with its part of REF too (docs/trace-format.md).
    """
    from parity.core.tolerances import user_tolerance

    with numeric_warnings_off():  # non-finite values are counted in the report, not warned about
        comparison = run_compare(args.reference, args.candidate, calibrate=args.calibrate,
                                 tolerance=user_tolerance(args.atol, args.rtol), checkpoints=args.checkpoints,
                                 strict=args.strict)
    return finish(comparison, args)


class _Captures:
    """The reference's model captured at a precision, once per (model, tokens, dtype, checkpoints) in a process."""

    def __init__(self) -> None:
        self._traces: dict[tuple, Trace] = {}

    def __repr__(self) -> str:
        return f"<_Captures {len(self._traces)}>"

    def __call__(self, model: str, *, tokens: list[int], dtype: str, checkpoints: str | None) -> Trace:
        from parity.capture.hf.model import load_model, quiet_transformers
        from parity.capture.precision import at_precision

        key = (str(Path(model).resolve()), tuple(tokens), dtype, checkpoints)
        if key not in self._traces:
            quiet_transformers()
            with at_precision(load_model(model, dtype=dtype)) as lowp:   # as a port at that precision computes
                self._traces[key] = lowp.capture(list(tokens), checkpoints=checkpoints)
        return self._traces[key]


_SESSION_REFERENCES = _Captures()


def reference_at_candidate_precision(reference: Trace, candidate: Trace, checkpoints: str | None):
    """(the reference's model run at the candidate's precision, or None; what could not be checked): when the
    candidate's precision is below the reference trace's, or both are float64 (DtypeNumerics.needed), and the
    trace names the model that made it."""
    from parity.capture.precision import DtypeNumerics
    from parity.core.results import NotChecked
    from parity.core.tolerances import lowest_precision, not_a_precision

    precision, reference_dtype = candidate.metadata.get("dtype"), reference.metadata.get("dtype")
    unknown = not_a_precision(precision)
    if unknown:
        return None, (NotChecked("calibration", f"the candidate's precision is unknown ({unknown}): "
                                 "the dtype tables' tolerances were used"),)
    if not precision or not reference_dtype or lowest_precision(precision, reference_dtype) != precision \
            or not DtypeNumerics(precision).needed(reference_dtype):
        return None, ()
    model = reference.metadata.get("model_path")
    if not model or not Path(model).exists() or reference.tokens is None:
        if precision == reference_dtype:   # float64 both: held to float64's own tolerances
            return None, ()
        return None, (NotChecked("calibration", f"the candidate computes in {precision}, below the reference's "
                                 f"{reference_dtype}, but the reference trace names no model to run at {precision}: "
                                 "capture the reference at that precision too (parity capture MODEL --dtype "
                                 f"{precision} -o REF_LOWP) and pass it to calibrate with (--calibrate REF_LOWP; "
                                 "assert_parity: calibrate=REF_LOWP); the dtype tables' tolerances were used"),)
    return _SESSION_REFERENCES(model, tokens=list(reference.tokens), dtype=precision, checkpoints=checkpoints), ()


def _label_of_own_run(lowp: Trace | None) -> str | None:
    """What the reference's model run here at the candidate's precision computes as (at_precision), where a
    dtype alone does not say it."""
    from parity.capture.precision import DtypeNumerics

    return DtypeNumerics(lowp.metadata["dtype"]).label if lowp is not None and lowp.metadata.get("dtype") else None


def run_compare(reference_path: str, candidate_path: str | list[str], *, calibrate: str | None = None,
                tolerance=None, checkpoints: str | None = None, strict: frozenset[str] = frozenset()):
    """The comparison of two traces: calibrated with `calibrate` (the reference run at the candidate's
    precision), else by running the reference's model again where the reference names it and the candidate's
    precision is lower; fixed tolerances otherwise (and `tolerance` when given). The candidate may be a
    tensor-parallel run's rank traces, or a shards manifest: merged by their layout (core/shards/)."""
    import dataclasses

    from parity.diagnose.compared import compare_and_diagnose
    from parity.commands.options import require_selection
    from parity.core.calibrate import check_same_tokens, noise_floors
    from parity.core.compare import CompareConfig
    from parity.core.errors import OptionError
    from parity.core.shards import load_candidate
    from parity.core.trace import load_trace

    config = CompareConfig(tolerance=tolerance, checkpoints=checkpoints)
    paths = candidate_path if isinstance(candidate_path, (list, tuple)) else [candidate_path]
    reference, candidate = load_trace(reference_path), load_candidate(paths)   # rank traces merged
    require_selection(reference.tensors, checkpoints, reference_path)
    lowp, not_checked, label = None, (), None
    if calibrate:
        if tolerance is not None:
            raise OptionError("--calibrate sets the tolerances itself; drop --atol/--rtol")
        lowp = load_trace(calibrate)
    elif tolerance is None:
        lowp, not_checked = reference_at_candidate_precision(reference, candidate, checkpoints)
        label = _label_of_own_run(lowp)
    if lowp is not None:
        check_same_tokens(reference, lowp)
        config = CompareConfig(checkpoints=checkpoints, noise=noise_floors(reference, lowp),
                               noise_dtype=lowp.metadata.get("dtype") or "float32", noise_label=label)
    comparison = compare_and_diagnose(reference, candidate, config, strict=strict)
    return dataclasses.replace(comparison, not_checked=tuple(comparison.not_checked) + not_checked) \
        if not_checked else comparison
