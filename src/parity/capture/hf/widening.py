"""An offloaded reference wider than its files: loaded at the files' precision, widened as each module runs.

transformers casts every weight as it loads. A bfloat16 checkpoint loaded in float64
with disk offload is therefore read whole at load time (its pages stay mapped until
loading ends: 12.5 GiB of resident memory for a 7B model) only for the offloaded copies
to be thrown away, since accelerate reads each offloaded weight again from the
safetensors when its module runs. Loaded at the files' own precision nothing is read.
Then every parameter is made wide: an offloaded one as a meta tensor of the wide dtype
(accelerate's hook casts each weight it brings in to its parameter's dtype), a
resident one in place. Buffers are taken from the model built wide (on the meta
device, buffers real) as a wide load makes them, so a buffer made in the default dtype
at init (Gemma's embedding normalizer) is exactly a wide load's, not a narrow rounding
widened. The device map is planned for the wide sizes, so --max-memory holds.
"""

from __future__ import annotations

from pathlib import Path

_NAMES = {"F64": "float64", "F32": "float32", "BF16": "bfloat16", "F16": "float16"}   # safetensors' floating dtypes
_WIDTHS = {"float64": 8, "float32": 4, "bfloat16": 2, "float16": 2}


def stored_float_dtype(directory: Path) -> str | None:
    """The one floating dtype the safetensors files of `directory` store ("bfloat16"), from their headers only;
    None when there are none, several floating dtypes, or a file safetensors cannot open."""
    from safetensors import SafetensorError, safe_open

    found = set()
    for file in sorted(Path(directory).glob("*.safetensors")):
        try:
            with safe_open(file, framework="pt") as handle:   # the header only: no tensor is read
                found |= {handle.get_slice(key).get_dtype() for key in handle.keys()}
        except (OSError, SafetensorError):
            return None
    floating = {_NAMES[code] for code in found if code in _NAMES}
    return floating.pop() if len(floating) == 1 else None


def narrower(stored: str | None, dtype: str) -> bool:
    """Whether weights stored as `stored` are narrower than the `dtype` asked for."""
    return stored in _WIDTHS and dtype in _WIDTHS and _WIDTHS[stored] < _WIDTHS[dtype]


def wide_device_map(transformers, torch, config, dtype: str, max_memory: dict | None):
    """(model built wide on the meta device with real buffers, accelerate's device map for it under max_memory)."""
    from accelerate import infer_auto_device_map, init_empty_weights

    with init_empty_weights(include_buffers=False):
        skeleton = transformers.AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype),
                                                                 attn_implementation="eager")
        skeleton.tie_weights()   # tied weights are planned as one
    device_map = infer_auto_device_map(skeleton, max_memory=max_memory, dtype=getattr(torch, dtype),
                                       no_split_module_classes=list(getattr(skeleton, "_no_split_modules", None)
                                                                    or []))
    return skeleton, device_map


def widen(model, skeleton, torch, dtype: str) -> None:
    """Make `model` (loaded narrow) what a wide load gives: parameters of `dtype` (offloaded ones on the meta
    device, cast by accelerate as they come in), the skeleton's non-persistent buffers, persistent ones widened."""
    wide = getattr(torch, dtype)
    planned = {name: parameter.dtype for name, parameter in skeleton.named_parameters(remove_duplicate=False)}
    made: dict[int, object] = {}   # one new parameter per old one: tied weights stay tied
    for owner_name, module in model.named_modules(remove_duplicate=False):
        for name, parameter in list(module._parameters.items()):
            if parameter is None or not parameter.is_floating_point():
                continue
            target = planned.get(f"{owner_name}.{name}".lstrip("."), wide)   # the wide load's own dtype for it
            if parameter.dtype == target:
                continue
            if id(parameter) not in made:
                if parameter.device.type == "meta":
                    data = torch.empty(parameter.shape, dtype=target, device="meta")
                else:
                    data = parameter.data.to(target)
                made[id(parameter)] = torch.nn.Parameter(data, requires_grad=False)
            module._parameters[name] = made[id(parameter)]
    built = dict(skeleton.named_buffers())
    for qualified, buffer in list(model.named_buffers()):
        owner_name, _, name = qualified.rpartition(".")
        owner = model.get_submodule(owner_name)
        persistent = name not in owner._non_persistent_buffers_set
        if not persistent and qualified in built and built[qualified].shape == buffer.shape:
            owner._buffers[name] = built[qualified].to(buffer.device)
        elif buffer.is_floating_point() and buffer.dtype != wide and buffer.device.type != "meta":
            owner._buffers[name] = buffer.to(wide)
    model.config.dtype = wide
