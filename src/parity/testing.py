"""`assert_parity`: a comparison as an assertion, like `torch.testing.assert_close`.

    from parity.testing import assert_parity
    assert_parity("reference.safetensors", "candidate.safetensors")      # two traces (or Trace objects)
    assert_parity(reference_trace, my_port)                              # a Trace and a torch.nn.Module
    assert_parity("path/to/hf-model", my_port, tokens=[1, 2, 3])         # a model and a module (or
                                                                         # "port.py:build", "llamacpp:x.gguf"), as check does

It returns the result when parity holds and raises `ParityAssertionError` (an
AssertionError) otherwise, whose message is the console summary: the first
divergence, its numbers, the diagnosis. The error carries the result
(`.comparison`), which the pytest plugin (`pytest --parity-report DIR`) turns
into an HTML report. Unusable arguments raise ParityError, as the CLI's exit 2.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Callable

from parity.core.compare import CompareConfig
from parity.core.errors import OptionError, ParityError
from parity.core.trace import Trace, load_trace

class ParityAssertionError(AssertionError):
    """Parity does not hold; `comparison` is the result that says where and why."""

    def __init__(self, message: str, comparison) -> None:
        super().__init__(message)
        self.comparison = comparison


def assert_parity(reference, candidate, *, prompt: str | None = None, tokens: list[int] | None = None,
                  atol: float | None = None, rtol: float | None = None, checkpoints: str | None = None,
                  calibrate: Any = True, dtype: str | None = None, taps: Any = None, decode_steps: int = 4,
                  replay: bool = False, msg: str | Callable[[str], str] | None = None):
    """Raise ParityAssertionError unless `candidate` computes what `reference` computes; return the result.

    reference: a Trace, a trace file, or a model (a transformers directory or a
      .gguf file) to capture over `prompt` or `tokens`.
    candidate: a Trace, a trace file, a torch.nn.Module (or a torch.export program), or (with a model as the
      reference) anything `parity check` takes: "port.py:build", "llamacpp:x.gguf", or a function of token ids
      returning logits (its logits alone are compared; the result's `layers_hidden` says so).
    atol, rtol: fixed tolerances for every checkpoint (both, or neither).
    calibrate: whether to hold each checkpoint to the noise of the candidate's
      precision, as `parity check` does: with a model reference, the reference runs
      again at that precision; with a reference trace parity captured (it names its
      model), so does that model, once per session and precision; or give the
      reference run at the candidate's precision yourself (a Trace or a path).
      Without a known precision below the reference's, fixed tolerances are used.
    msg: replaces the message, or (a callable) rewrites it.
    """
    from parity.core.tolerances import user_tolerance

    tolerance = user_tolerance(atol, rtol)
    if _is_model(reference):
        result = _check_model(reference, candidate, prompt=prompt, tokens=tokens, tolerance=tolerance,
                              checkpoints=checkpoints, calibrate=bool(calibrate), dtype=dtype, taps=taps,
                              decode_steps=decode_steps, replay=replay)
    else:
        if prompt is not None or tokens is not None:
            raise OptionError("prompt and tokens are for a model reference; a trace already holds its tokens")
        reference_trace = _trace(reference, "reference")
        candidate_trace = _candidate_trace(candidate, reference_trace, taps, checkpoints)
        config = CompareConfig(tolerance=tolerance, checkpoints=checkpoints)
        not_checked = ()
        if calibrate is True and tolerance is None:
            from parity.commands.compare import reference_at_candidate_precision

            lowp, not_checked = reference_at_candidate_precision(reference_trace, candidate_trace, checkpoints)
            if lowp is not None:
                config = _calibrated(reference_trace, lowp, config)
        elif calibrate not in (True, False, None):
            config = _calibrated(reference_trace, _trace(calibrate, "calibrate"), config)
        from parity.diagnose.compared import compare_and_diagnose

        result = compare_and_diagnose(reference_trace, candidate_trace, config)
        if not_checked:
            result = dataclasses.replace(result, not_checked=tuple(result.not_checked) + not_checked)
    if not result:
        message = summary(result)
        if msg is not None:
            message = msg(message) if callable(msg) else str(msg)
        raise ParityAssertionError(message, result)
    return result


def summary(result, *, width: int = 100) -> str:
    """The console report of any parity result, as plain text."""
    from parity.report.registry import render

    return render(result, "console", width=width).rstrip()


def is_result(value) -> bool:
    """Whether `value` is a parity result: some report renders its type."""
    from parity.report.registry import renders

    return renders(value)


def explain_comparison(op: str, left, right) -> list[str] | None:
    """pytest_assertrepr_compare for parity results: each result's console summary, under one line."""
    results = [(side, value) for side, value in (("left", left), ("right", right)) if is_result(value)]
    if not results:
        return None
    lines = [f"{left!r} {op} {right!r}"]
    lines += [f"{side}: {'passed' if value else 'failed'}" for side, value in results]  # pytest shows ~8 lines
    for side, value in results:
        lines += ["", f"{side}:", *summary(value).splitlines()]
    return lines


# --- a reference captured once per session --------------------------------------------


class ReferenceCache:
    """Reference traces captured once per (model, inputs, dtype, checkpoints): the plugin's session fixture."""

    def __init__(self) -> None:
        self._traces: dict[tuple, Trace] = {}
        self.captures = 0

    def __repr__(self) -> str:
        return f"<ReferenceCache {len(self._traces)} traces>"

    def __call__(self, model: str | Path, *, prompt: str | None = None, tokens: list[int] | None = None,
                 dtype: str = "float32", checkpoints: str | None = None) -> Trace:
        from parity.capture.hf.model import capture_hf

        key = (str(Path(model).resolve()), prompt, tuple(tokens) if tokens is not None else None, dtype, checkpoints)
        if key not in self._traces:
            self._traces[key] = capture_hf(model, prompt=prompt, tokens=tokens, dtype=dtype, checkpoints=checkpoints)
            self.captures += 1
        return self._traces[key]


def report_path(directory: str | Path, test_id: str) -> Path:
    """Where the plugin writes a failing test's HTML report: its id, made a file name."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", test_id).strip("_.")[:150] or "test"
    return Path(directory) / f"{name}.html"


def write_report(result, directory: str | Path, test_id: str, *, overwrite: bool = False) -> str:
    """Write `result`'s HTML report for a failing test; returns a line saying where, or why not."""
    from parity.report.registry import write

    path = report_path(directory, test_id)
    if path.exists() and not overwrite:
        return f"{test_id}: no report written: {path} exists; pass --parity-report-force to replace it"
    try:
        write(result, "html", path, overwrite=overwrite)
    except ParityError as error:
        return f"{test_id}: no report written: {error}"
    return f"{test_id}: {path}"


def check_report_directory(directory: str | Path) -> Path:
    """The --parity-report directory, checked before any test runs."""
    path = Path(directory)
    if path.exists() and not path.is_dir():
        raise OptionError(f"--parity-report {path} is a file; give a directory for the HTML reports")
    return path


# --- arguments --------------------------------------------------------------------------


def _is_model(value) -> bool:
    if isinstance(value, Trace) or not isinstance(value, (str, Path)):
        return False
    path = Path(value)
    return (path.is_dir() and (path / "config.json").is_file()) or (path.is_file() and path.suffix == ".gguf")


def _trace(value, role: str) -> Trace:
    if isinstance(value, Trace):
        return value
    if isinstance(value, (str, Path)):
        return load_trace(value)
    raise OptionError(f"{role} must be a Trace, a trace file or a model path, not {type(value).__name__}")


def _candidate_trace(candidate, reference: Trace, taps, checkpoints) -> Trace:
    if isinstance(candidate, Trace):
        return candidate
    from parity.capture.candidate import TraceRequest, open_candidate, parse_candidate
    from parity.capture.torch.exported import is_exported

    if not isinstance(candidate, (str, Path)) and not hasattr(candidate, "named_modules") \
            and not is_exported(candidate):
        function = " (a function of token ids needs a model as the reference)" if callable(candidate) else ""
        raise OptionError(f"candidate must be a Trace, a trace file, a torch.nn.Module or a program made by "
                          f"torch.export, not {type(candidate).__name__}{function}")

    parsed = parse_candidate(str(candidate) if isinstance(candidate, Path) else candidate)
    if parsed.offers("logits") and isinstance(parsed.text, str):
        raise OptionError(f"candidate {candidate!r} needs a model as the reference (a directory or .gguf), "
                          "not a trace: parity captures both sides from it")
    if parsed.offers("logits") and reference.tokens is None:
        raise OptionError("the reference trace records no tokens to run the candidate module on; "
                          "capture it with parity (or give a model path as the reference)")
    with open_candidate(parsed.text, needs=("trace",)) as opened:
        return opened.trace(list(reference.tokens or []), TraceRequest(taps=taps, checkpoints=checkpoints, raw=False))


def _calibrated(reference: Trace, lowp: Trace, config: CompareConfig) -> CompareConfig:
    from parity.core.calibrate import check_same_tokens, noise_floors

    if config.tolerance is not None:
        raise OptionError("calibrate sets the tolerances itself; drop atol/rtol")
    check_same_tokens(reference, lowp)
    return CompareConfig(checkpoints=config.checkpoints, noise=noise_floors(reference, lowp),
                         noise_dtype=lowp.metadata.get("dtype") or "float32")


def _check_model(model, candidate, **options):
    from parity.commands.check.pipeline import CheckOptions, run_check

    if isinstance(candidate, Trace):
        if not candidate.source or not Path(candidate.source).exists():
            raise OptionError("with a model as the reference, give the candidate trace as a file path "
                              "(this Trace was not read from a file)")
        candidate = candidate.source
    if isinstance(candidate, Path):
        candidate = str(candidate)
    from parity.capture.torch.exported import is_exported

    if not (isinstance(candidate, str) or hasattr(candidate, "named_modules") or is_exported(candidate)) \
            and callable(candidate):   # a function of token ids: its logits alone (capture/torch/opaque.py)
        from parity.capture.torch.opaque import OpaqueModel

        candidate = OpaqueModel(candidate, getattr(candidate, "__qualname__", type(candidate).__name__))
    if not (isinstance(candidate, str) or hasattr(candidate, "named_modules") or is_exported(candidate)):
        raise OptionError(f"candidate must be a torch.nn.Module, a program made by torch.export, a function of "
                          f"token ids, a trace or a 'port.py:build' spec, not {type(candidate).__name__}")
    return run_check(CheckOptions(model=str(model), candidate=candidate, **options))
