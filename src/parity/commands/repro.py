"""parity repro: the first divergent op, alone, as a test a user can iterate on.

From a JSON report, take the checkpoint where the error was introduced (else the
first divergence) and write to a directory:
    inputs.safetensors     the reference's inputs to that op (a parity trace)
    expected.safetensors   the reference's output of it
    candidate.safetensors  the candidate's output, when its trace is known
    weights.safetensors    the op's parameters, when --reference gives the reference model
    test_repro.py          a pytest file: runs the user's function on the inputs and
                           checks its output against the expected one
    README.md              what is there and how to run it
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from parity.commands.output import EXIT_PASS
from parity.core.errors import OptionError, TraceError
from parity.core.files import check_output_directory, write_atomically
from parity.core.metrics import rms
from parity.core.names import inputs_of, parse
from parity.core.text_input import read_text
from parity.core.trace import Trace, load_trace, make_trace, save_trace


@dataclass(frozen=True)
class Repro:
    directory: Path
    checkpoint: str
    inputs: tuple[str, ...]
    weights: tuple[str, ...]
    max_rel_l2: float

    def __repr__(self) -> str:
        return f"<Repro {self.checkpoint} in {self.directory}>"


def add_arguments(parser) -> None:
    from parity.commands import options

    parser.add_argument("report", metavar="REPORT", help="a JSON report of parity check or compare")
    parser.add_argument("-o", "--output", required=True, help="directory to write")
    parser.add_argument("--reference", metavar="MODEL", help="the reference model, to export the op's weights")
    options.deprecated(parser, "--model", "--reference", "reference")
    parser.add_argument("--reference-trace", metavar="TRACE",
                        help="the reference trace (default: the path the report records)")
    parser.add_argument("--checkpoint", help="reproduce this checkpoint instead of the report's divergence")
    parser.add_argument("--force", action="store_true", help="write into a directory that is not empty")
    parser.set_defaults(output_kind="directory")


def run(args) -> int:
    """Write the first divergent op alone as a test: its reference inputs, weights, expected output.

    Reads a JSON report (parity check --json OUT --save-traces DIR records where its
    traces are), takes the checkpoint where the error was introduced (else the first
    divergence, or --checkpoint), and writes to -o DIR the reference's inputs to it,
    its parameters (with --reference MODEL), its expected output and a pytest file
    that runs a function of yours (PARITY_REPRO_OP=module:function) on them.
    """
    model, trace = _reference_options(args)
    repro = write_repro(Path(args.report), Path(args.output), reference_path=trace, model=model,
                        checkpoint=args.checkpoint, overwrite=args.force)
    print(f"wrote {repro.checkpoint} alone to {repro.directory}: inputs {', '.join(repro.inputs)}; "
          f"weights {', '.join(repro.weights) or 'none'}; run: PARITY_REPRO_OP=module:function "
          f"pytest {repro.directory / 'test_repro.py'}")
    return EXIT_PASS


def _reference_options(args) -> tuple[str | None, str | None]:
    """(the reference model, the reference trace). The last release's --reference named the trace: a value
    that is no model is still taken as one, with a note."""
    from parity.capture.hf.model import is_model_path

    model, trace = args.reference, args.reference_trace
    if model is not None and not is_model_path(model) and trace is None and Path(model).exists():
        import sys

        print(f"parity: note: --reference {model} is a trace: --reference now names the reference model; "
              "give the trace as --reference-trace (taken as one this release)", file=sys.stderr)
        return None, model
    return model, trace


def write_repro(report_path: Path, directory: Path, *, reference_path: Path | None = None, model: str | None = None,
                checkpoint: str | None = None, overwrite: bool = False) -> Repro:
    report = _read_report(report_path)
    name = checkpoint or _target(report, report_path)
    entry = next((c for c in report["checkpoints"] if c["name"] == name), None)   # each checked by _read_report
    if entry is None:
        raise OptionError(f"{report_path}: no checkpoint '{name}' in this report")
    reference = _reference_trace(report, report_path, reference_path)
    if name not in reference.tensors:
        raise OptionError(f"the reference trace of {report_path} has no tensor '{name}'; pass the trace it was "
                          "compared with as --reference")
    sources = inputs_of(name, reference.tensors)
    if not sources:
        raise OptionError(f"the reference trace holds none of the inputs of {name}; it cannot be reproduced alone")
    bound = _rel_l2_bound(entry, reference[name], report_path)   # every field checked before anything is written
    check_output_directory(directory, overwrite=overwrite, option="-o")
    weights = _weights(model, name) if model else {}
    files = {"inputs.safetensors": make_trace({s: reference[s] for s in sources}, {"tokens": reference.tokens}),
             "expected.safetensors": make_trace({name: reference[name]}, {"tokens": reference.tokens})}
    candidate_path = _field(report, ("candidate", "source"), str, report_path)
    if candidate_path and Path(candidate_path).exists():
        candidate = load_trace(candidate_path)
        if name in candidate:
            files["candidate.safetensors"] = make_trace({name: candidate[name]})
    if weights:
        files["weights.safetensors"] = make_trace(weights, {})
    for file_name, trace in files.items():
        save_trace(trace, directory / file_name, overwrite=overwrite)
    write_atomically(directory / "test_repro.py", _TEST.format(checkpoint=name, inputs=", ".join(sources),
                                                               weights=", ".join(weights) or "none", bound=bound),
                     overwrite=overwrite, option="-o")
    write_atomically(directory / "README.md", _README.format(checkpoint=name, inputs=", ".join(sources),
                                                             weights=", ".join(weights) or "none (give --reference MODEL)",
                                                             bound=bound, directory=directory),
                     overwrite=overwrite, option="-o")
    return Repro(directory, name, tuple(sources), tuple(weights), bound)


def _read_report(path: Path) -> dict:
    try:
        report = json.loads(read_text(path, what="the report"))
    except (ValueError, RecursionError):
        raise OptionError(f"{path}: not a JSON report (write one with --json)") from None
    if not isinstance(report, dict) or report.get("schema") != "parity-report/1" or "checkpoints" not in report:
        raise OptionError(f"{path}: not a parity layer report (schema parity-report/1 with checkpoints)")
    checkpoints = _field(report, ("checkpoints",), list, path)
    for index, entry in enumerate(checkpoints):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise OptionError(f"{path}: checkpoints[{index}] is {_shown(entry)}, not an object with a string 'name'; "
                              "write the report again with --json")
    return report


def _field(report: dict, keys: tuple[str, ...], kind: type, path: Path):
    """report[keys[0]][keys[1]]..., None where absent, else of type `kind` or an OptionError naming the field."""
    value = report
    for depth, key in enumerate(keys):
        if value is None:
            return None
        if not isinstance(value, dict):
            raise OptionError(f"{path}: '{'.'.join(keys[:depth])}' is {_shown(value)}, not an object; "
                              "write the report again with --json")
        value = value.get(key)
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool) and kind is not bool):
        raise OptionError(f"{path}: '{'.'.join(keys)}' is {_shown(value)}, not a {_KIND_NAMES[kind]}; "
                          "write the report again with --json")
    return value


_KIND_NAMES = {str: "string", dict: "JSON object", list: "JSON list", (int, float): "number"}


def _shown(value) -> str:
    text = json.dumps(value)[:60] if not isinstance(value, (dict, list)) else type(value).__name__
    return text


def _target(report: dict, path: Path) -> str:
    name = (_field(report, ("origin", "checkpoint"), str, path)
            or _field(report, ("first_divergence", "checkpoint"), str, path))
    if name is None:
        raise OptionError(f"{path}: the comparison passed; there is no divergence to reproduce (name one with --checkpoint)")
    return name


def _reference_trace(report: dict, report_path: Path, given: Path | None) -> Trace:
    path = given or _field(report, ("reference", "source"), str, report_path)
    if not path:
        raise OptionError(f"{report_path} does not say where the reference trace is: pass --reference-trace "
                          "(parity check --save-traces DIR keeps both traces)")
    try:
        return load_trace(path)
    except TraceError as error:
        raise OptionError(f"the reference trace of {report_path}: {error}") from None


def _weights(model: str, name: str) -> dict[str, np.ndarray]:
    """The parameters of the reference module that produces `name` (none for parameter-free ops)."""
    from parity.capture.hf.model import load_model, quiet_transformers
    from parity.capture.torch.taps import compile_pattern

    quiet_transformers()
    loaded = load_model(model)
    checkpoint = parse(name)
    taps = loaded.mapping.taps
    modules = dict(loaded.model.named_modules())
    for tap in taps:
        if not (tap.io == "heads" or (tap.io == "output" and len(tap.names) == 1)):
            continue
        pattern = tap.names[0].replace("{i}", str(checkpoint.layer)) if checkpoint.layer is not None else tap.names[0]
        if pattern != name:
            continue
        path = tap.module.replace("{i}", str(checkpoint.layer)) if checkpoint.layer is not None else tap.module
        module = modules.get(path)
        if module is not None and compile_pattern(tap.module).match(path):
            return {key: value.detach().float().cpu().numpy() for key, value in module.named_parameters(recurse=False)}
    return {}


def _rel_l2_bound(entry: dict, expected: np.ndarray, path: Path) -> float:
    """The report's tolerance for this checkpoint, as a bound on rel_l2."""
    where = f"{path}: checkpoint {entry['name']}"
    tolerance = _field(entry, ("tolerance",), dict, where) or {}
    bounds = {key: _field(tolerance, (key,), (int, float), where) for key in ("max_rel_l2", "rtol", "atol")}
    if any(value is not None and not (math.isfinite(value) and value >= 0) for value in bounds.values()):
        raise OptionError(f"{where}: its tolerance holds a negative or non-finite bound; write the report again with --json")
    if bounds["max_rel_l2"] is not None:
        return float(bounds["max_rel_l2"])
    scale = rms(expected)
    rtol, atol = bounds["rtol"], bounds["atol"]
    return float(1e-4 if rtol is None else rtol) + (float(atol or 0.0) / scale if scale > 0 else 0.0)


_TEST = '''"""Reproduces {checkpoint} alone, from the reference's inputs to it (written by parity repro).

Point PARITY_REPRO_OP at the function under test, as module:function or path/to/file.py:function.
It is called as function(inputs, weights), both dicts of numpy arrays:
    inputs:  {inputs}
    weights: {weights}
and must return {checkpoint} in the reference's layout (see expected.safetensors).
"""

import importlib
import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

from parity import load_trace

HERE = Path(__file__).parent
CHECKPOINT = "{checkpoint}"
MAX_REL_L2 = {bound!r}  # the tolerance this checkpoint had in the report


def load_op():
    spec = os.environ.get("PARITY_REPRO_OP")
    if not spec:
        pytest.fail("set PARITY_REPRO_OP=module:function (or file.py:function) to the implementation under test")
    target, _, name = spec.rpartition(":")
    if target.endswith(".py"):
        module_spec = importlib.util.spec_from_file_location(Path(target).stem, target)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    return getattr(module, name)


def test_reproduces_the_reference():
    inputs = dict(load_trace(HERE / "inputs.safetensors").tensors)
    weights_path = HERE / "weights.safetensors"   # parameters, not checkpoints: read as plain safetensors
    weights = safetensors.numpy.load_file(weights_path) if weights_path.exists() else {{}}
    expected = load_trace(HERE / "expected.safetensors")[CHECKPOINT].astype(np.float64)
    output = np.asarray(load_op()(inputs, weights), dtype=np.float64).reshape(expected.shape)
    rel_l2 = np.linalg.norm(output - expected) / np.linalg.norm(expected)
    assert rel_l2 <= MAX_REL_L2, f"{{CHECKPOINT}}: rel_l2 {{rel_l2:.3g}} exceeds {{MAX_REL_L2:.3g}}"
'''

_README = '''# Reproducing {checkpoint}

parity found the error introduced at `{checkpoint}`. This directory holds that op alone:

- `inputs.safetensors`: the reference's inputs to it: {inputs}
- `weights.safetensors`: its parameters: {weights}
- `expected.safetensors`: the reference's output
- `candidate.safetensors` (when the candidate's trace was saved): what your implementation produced
- `test_repro.py`: runs your function on the inputs and checks the output to rel_l2 <= {bound:.3g}

Run it against your implementation:

    PARITY_REPRO_OP=my_kernels.py:my_op pytest {directory}/test_repro.py

Each file is a parity trace (safetensors): `parity.load_trace(path).tensors` reads it.
'''
