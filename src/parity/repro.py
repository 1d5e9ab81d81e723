"""parity repro: the first divergent op, alone, as a test a user can iterate on.

From a JSON report, take the checkpoint where the error was introduced (else the
first divergence) and write to a directory:
    inputs.safetensors     the reference's inputs to that op (a parity trace)
    expected.safetensors   the reference's output of it
    candidate.safetensors  the candidate's output, when its trace is known
    weights.safetensors    the op's parameters, when --model gives the reference model
    test_repro.py          a pytest file: runs the user's function on the inputs and
                           checks its output against the expected one
    README.md              what is there and how to run it
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from parity.core.errors import OptionError, TraceError
from parity.core.metrics import rms
from parity.core.names import inputs_of, parse
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


def write_repro(report_path: Path, directory: Path, *, reference_path: Path | None = None, model: str | None = None,
                checkpoint: str | None = None, overwrite: bool = False) -> Repro:
    report = _read_report(report_path)
    name = checkpoint or _target(report, report_path)
    entry = next((c for c in report["checkpoints"] if c["name"] == name), None)
    if entry is None:
        raise OptionError(f"{report_path}: no checkpoint '{name}' in this report")
    reference = _reference_trace(report, report_path, reference_path)
    sources = inputs_of(name, reference.tensors)
    if not sources:
        raise OptionError(f"the reference trace holds none of the inputs of {name}; it cannot be reproduced alone")
    _prepare(directory, overwrite)
    save_trace(make_trace({s: reference[s] for s in sources}, {"tokens": reference.tokens}), directory / "inputs.safetensors")
    save_trace(make_trace({name: reference[name]}, {"tokens": reference.tokens}), directory / "expected.safetensors")
    candidate_path = report.get("candidate", {}).get("source")
    if candidate_path and Path(candidate_path).exists():
        candidate = load_trace(candidate_path)
        if name in candidate:
            save_trace(make_trace({name: candidate[name]}), directory / "candidate.safetensors")
    weights = _weights(model, name) if model else {}
    if weights:
        save_trace(make_trace(weights, {}), directory / "weights.safetensors")
    bound = _rel_l2_bound(entry, reference[name])
    (directory / "test_repro.py").write_text(_TEST.format(checkpoint=name, inputs=", ".join(sources),
                                                          weights=", ".join(weights) or "none", bound=bound))
    (directory / "README.md").write_text(_README.format(checkpoint=name, inputs=", ".join(sources),
                                                        weights=", ".join(weights) or "none (give --model)",
                                                        bound=bound, directory=directory))
    return Repro(directory, name, tuple(sources), tuple(weights), bound)


def _read_report(path: Path) -> dict:
    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise OptionError(f"{path}: no such report") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise OptionError(f"{path}: not a JSON report (write one with --json)") from None
    if not isinstance(report, dict) or report.get("schema") != "parity-report/1" or "checkpoints" not in report:
        raise OptionError(f"{path}: not a parity layer report (schema parity-report/1 with checkpoints)")
    return report


def _target(report: dict, path: Path) -> str:
    divergence = report.get("origin") or report.get("first_divergence")
    if divergence is None:
        raise OptionError(f"{path}: the comparison passed; there is no divergence to reproduce (name one with --checkpoint)")
    return divergence["checkpoint"]


def _reference_trace(report: dict, report_path: Path, given: Path | None) -> Trace:
    path = given or report.get("reference", {}).get("source")
    if not path:
        raise OptionError(f"{report_path} does not say where the reference trace is: pass --reference "
                          "(parity check --save-traces DIR keeps both traces)")
    try:
        return load_trace(path)
    except TraceError as error:
        raise OptionError(f"the reference trace of {report_path}: {error}") from None


def _prepare(directory: Path, overwrite: bool) -> None:
    if directory.exists() and any(directory.iterdir()) and not overwrite:
        raise OptionError(f"{directory} exists and is not empty; choose another -o or pass --force")
    directory.mkdir(parents=True, exist_ok=True)


def _weights(model: str, name: str) -> dict[str, np.ndarray]:
    """The parameters of the reference module that produces `name` (none for parameter-free ops)."""
    from parity.capture.hf import load_model, quiet_transformers
    from parity.capture.torch_module import _compile

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
        if module is not None and _compile(tap.module).match(path):
            return {key: value.detach().float().numpy() for key, value in module.named_parameters(recurse=False)}
    return {}


def _rel_l2_bound(entry: dict, expected: np.ndarray) -> float:
    """The report's tolerance for this checkpoint, as a bound on rel_l2."""
    tolerance = entry.get("tolerance") or {}
    if tolerance.get("max_rel_l2") is not None:
        return float(tolerance["max_rel_l2"])
    scale = rms(expected)
    return float(tolerance.get("rtol", 1e-4)) + (float(tolerance.get("atol", 0.0)) / scale if scale > 0 else 0.0)


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
    weights_path = HERE / "weights.safetensors"
    weights = dict(load_trace(weights_path).tensors) if weights_path.exists() else {{}}
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
