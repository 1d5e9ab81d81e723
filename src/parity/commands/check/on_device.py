"""parity check --on-device: measure where both models run, keeping no trace on the host.

When the reference and a PyTorch candidate run on one device, the host never needs
their tensors: the reference's checkpoints stay on the device as its forward made
them (no copy), and each of the candidate's is measured against its reference
(core/torch_metrics.py) the moment its hook sees it, then let go. Only the results
come back: a few numbers per checkpoint. A calibration run at the candidate's
precision is measured against the reference the same way.

A comparison that passes is the answer. One that fails is run again the usual way,
with full traces on the host, because the diagnosis (which op, which cause) reads
the tensors themselves.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from parity.capture.torch.module import base_metadata, input_ids_of, nothing_recorded, recorded_tensors, returned_logits, traced_forward
from parity.core.calibrate import NoiseFloor, noise_floor, without_dips
from parity.core.compare import CompareConfig, compare, compare_checkpoint, require_compared
from parity.core.errors import OptionError
from parity.core.names import INDEX_KINDS, Checkpoint, parse
from parity.core.results import Comparison
from parity.core.trace.trace import Trace, as_array, clean_metadata

ON_DEVICE_NOTE = "measured on {device}: both models ran there and no trace was copied to the host (--on-device)"


def check_options(options, spec) -> None:
    """Refuse, before anything is loaded, what --on-device cannot do (`spec`: the parsed CANDIDATE)."""
    if not spec.offers("on_device"):
        raise OptionError(f"--on-device needs a candidate that runs in PyTorch (FILE.py:FACTORY or a model "
                          f"directory); {options.candidate} is {spec.written}: drop --on-device")
    given = [flag for flag, value in (("--save-traces", options.save_traces), ("--replay", options.replay),
                                      ("--weights", options.weights)) if value]
    if given:
        raise OptionError(f"{given[0]} needs the tensors on the host, which --on-device does not bring there: "
                          "drop one of the two")


def check_devices(reference_model, candidate) -> str:
    """The one device both models run on; a clear error when they do not share one."""
    reference_device, candidate_device = _device_of(reference_model.model), _device_of(candidate.module)
    if reference_device is None:
        raise OptionError("--on-device needs the reference on one device, but its weights are spread over several or "
                          "offloaded (--device-map/--max-memory): give --device-map cuda:0 (or cpu), or drop --on-device")
    if not any(True for _ in candidate.module.parameters()):
        raise OptionError("--on-device needs the candidate's device, and it holds no parameters to tell it by (a "
                          "function of token ids, a compiled blob): drop --on-device")
    if candidate_device != reference_device:
        raise OptionError(f"--on-device needs both models on one device: the reference runs on {reference_device}, "
                          f"the candidate's parameters are on {candidate_device or 'several devices'}; build the "
                          f"candidate on {reference_device}, or drop --on-device")
    return reference_device


def reference_on_device(model, tokens: list[int], *, taps, checkpoints: str | None, raw: bool,
                        metadata: dict) -> Trace:
    """The reference's checkpoints as its forward made them, left on its device (a Trace of torch tensors)."""
    input_ids = input_ids_of(tokens, model)
    tensors = recorded_tensors(model, input_ids, taps, None, checkpoints=checkpoints, raw=raw, host=False)
    return Trace(tensors=tensors, metadata=clean_metadata({**base_metadata(model, input_ids), **metadata}),
                 dtypes={name: _dtype(tensor) for name, tensor in tensors.items()})


def noise_on_device(reference: Trace, lowp_model, *, taps, checkpoints: str | None,
                    raw: bool) -> dict[str, NoiseFloor]:
    """calibrate.noise_floors of a run at the candidate's precision, each checkpoint measured as it is made."""
    floors: dict[str, NoiseFloor] = {}

    def measure(name: str, tensor) -> None:
        if name in reference and tuple(reference[name].shape) == tuple(tensor.shape):
            floors[name] = noise_floor(name, reference[name], tensor)

    _run_measured(lowp_model, reference.tokens, measure, taps=taps, checkpoints=checkpoints, raw=raw)
    return without_dips(floors)


def candidate_on_device(reference: Trace, model, config: CompareConfig, *, taps, raw: bool,
                        metadata: dict | None = None) -> tuple[Comparison, Trace] | None:
    """compare() of the candidate against the on-device reference, each checkpoint measured as it is made, and
    the candidate's trace of shapes; None when a checkpoint failed (its diagnosis needs the tensors)."""
    measured, shapes, dtypes = {}, {}, {}
    routing: dict = {}   # the few small tensors expert routing is judged from, kept on the host
    input_ids = input_ids_of(reference.tokens, model)
    metadata = clean_metadata({**base_metadata(model, input_ids), **(metadata or {})})

    def measure(name: str, tensor) -> None:
        shapes[name], dtypes[name] = tuple(tensor.shape), _dtype(tensor)
        kind = (parse(name) or Checkpoint(name=name, kind=name)).kind
        if kind == "moe_router_logits":
            routing[name] = as_array(tensor)[0]
        if name not in reference:
            return
        if kind in INDEX_KINDS:   # integer ids and the router logits behind them: compared on the host
            candidate = Trace(tensors={**routing, name: as_array(tensor)[0]}, metadata=metadata)
            measured[name] = compare_checkpoint(name, _host_view(reference), candidate, config)
            return
        candidate = Trace(tensors={name: tensor}, metadata=metadata, dtypes={name: dtypes[name]})
        measured[name] = compare_checkpoint(name, reference, candidate, config)

    _run_measured(model, reference.tokens, measure, taps=taps, checkpoints=config.checkpoints, raw=raw)
    if any(result.failed for result, _ in measured.values()):
        return None
    candidate = Trace(tensors=_Measured(shapes), metadata=metadata, dtypes=dtypes)
    comparison = compare(reference, candidate, config=config, measured=measured)
    require_compared(comparison, reference, candidate, config)
    return comparison, candidate


def _run_measured(model, tokens, measure: Callable, *, taps, checkpoints: str | None, raw: bool) -> None:
    """One forward of `model`, each checkpoint handed to `measure(name, tensor)` on its device as it is made."""
    sink = _MeasuringSink(measure)
    input_ids = input_ids_of(tokens, model)
    _, output = traced_forward(model, input_ids, taps, None, copy=False, sink=sink, host=False, raw=raw,
                                checkpoints=checkpoints, token_count=input_ids.shape[-1])
    logits = returned_logits(output, checkpoints, present=sink)
    if logits is not None:
        sink.put("logits", logits, owned=False)
    if not sink.names:
        raise nothing_recorded(model)


class _MeasuringSink:
    """A ModuleTracer sink that measures each checkpoint at once, on its device, and keeps nothing of it."""

    def __init__(self, measure: Callable) -> None:
        self._measure = measure
        self.names: set[str] = set()

    def __repr__(self) -> str:
        return f"<_MeasuringSink {len(self.names)} measured>"

    def __contains__(self, name: str) -> bool:
        return name in self.names

    def put(self, name: str, tensor, *, owned: bool, ready=None) -> None:
        self.names.add(name)
        self._measure(name, tensor)


class _Measured(dict):
    """The candidate's checkpoints after an on-device pass: their shapes, their data already measured."""

    def __getitem__(self, name: str):
        raise KeyError(f"{name}: measured on the device and not kept; run without --on-device to read it")

    def shape_of(self, name: str) -> tuple[int, ...]:
        return dict.__getitem__(self, name)


class _OnHost(dict):
    """A device trace's tensors read as host arrays, for the few small ones compared on the host."""

    def __getitem__(self, name: str):
        return as_array(dict.__getitem__(self, name))[0]


def _host_view(trace: Trace) -> Trace:
    return Trace(tensors=_OnHost(trace.tensors), metadata=trace.metadata, dtypes=trace.dtypes)


def _device_of(model) -> str | None:
    """The one device all of the model's parameters are on; None when spread over several, or offloaded."""
    devices = {str(parameter.device) for parameter in model.parameters()}
    return devices.pop() if len(devices) == 1 and "meta" not in devices else None


def _dtype(tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def forward_on_device(options, reference_model, candidate, tokens: list[int], *, calibrating: bool,
                      reference_dtype: str, progress) -> tuple[Comparison, dict] | None:
    """The forward pass's comparison, measured on the device both models share, and the reference trace's
    metadata; None when it failed (parity check then runs it again with full traces, to diagnose it)."""
    device = check_devices(reference_model, candidate)
    raw_reference = options.raw and candidate.supports("raw") is None
    taps = candidate.taps(options.taps)
    raw_candidate = options.raw and candidate.raw_allowed(options.taps)
    progress.step(f"capturing the reference over {len(tokens)} tokens, kept on {device}")
    reference = reference_on_device(reference_model.model, tokens, taps=reference_model.mapping.taps,
                                    checkpoints=options.checkpoints, raw=raw_reference,
                                    metadata=reference_model.trace_metadata(options.prompt))
    config = CompareConfig(tolerance=options.tolerance, checkpoints=options.checkpoints)
    if calibrating and candidate.numerics.needed(reference_dtype):
        numerics = candidate.numerics
        progress.step(f"calibrating on {device}: the reference in {numerics.label or numerics.dtype}")
        with numerics.reference(reference_model, options.placement) as lowp:
            noise = noise_on_device(reference, lowp.model, taps=reference_model.mapping.taps,
                                    checkpoints=options.checkpoints, raw=raw_reference)
        del lowp
        config = CompareConfig(tolerance=options.tolerance, checkpoints=options.checkpoints, noise=noise,
                               noise_dtype=numerics.dtype, noise_label=numerics.label)
    progress.step(f"measuring the candidate against the reference on {device}, checkpoint by checkpoint")
    # a model-directory candidate traced by its family's taps says what hf.capture says of it
    own = None if options.taps else candidate.trace_metadata(options.prompt)
    measured = candidate_on_device(reference, candidate.module, config, taps=taps, raw=raw_candidate,
                                   metadata=own)
    if measured is None:
        return None
    from parity.diagnose import diagnose

    # The detectors see the results and the metadata, not the tensors: those of a pass are not kept.
    # (A detector that needs tensors finds nothing to read; the integration tests check that a pass gets
    # the same diagnoses this way as with full traces.)
    comparison, candidate = measured
    comparison = diagnose(comparison, Trace(tensors={}, metadata=reference.metadata),
                          Trace(tensors={}, metadata=candidate.metadata))
    return (dataclasses.replace(comparison, notes=tuple(comparison.notes) + (ON_DEVICE_NOTE.format(device=device),)),
            dict(reference.metadata))
