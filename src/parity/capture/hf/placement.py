"""Where the reference's weights live: for models larger than the machine.

The reference is loaded through accelerate's big-model inference, an existing
engine rather than sharding of our own: `--device auto` spreads the layers
over the GPUs, the CPU and, past `--max-memory`, the disk (`--offload-dir`).
parity's hooks sit on the modules themselves, so every checkpoint is captured
wherever the module runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

from parity.core.errors import OptionError

_DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|KIB|MB|MIB|GB|GIB|TB|TIB)?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Placement:
    device_map: str | None = None                    # accelerate's device_map strategy, or a single device
    max_memory: tuple[tuple[str, str], ...] = ()     # (device, size) pairs, e.g. (("cpu", "2GiB"), ("0", "20GiB"))
    offload_dir: str | None = None                   # where weights beyond max_memory go

    def __repr__(self) -> str:
        return f"<Placement {self.device_map or 'default'} max_memory={dict(self.max_memory)} offload={self.offload_dir}>"

    def __bool__(self) -> bool:
        return bool(self.device_map or self.max_memory or self.offload_dir)

    @property
    def offloads(self) -> bool:
        """Whether a memory cap or an offload folder was given: every model loaded for the run keeps to it."""
        return bool(self.max_memory or self.offload_dir)

    def within(self, folder: str) -> "Placement":
        """The same placement, offloading into `folder`."""
        return replace(self, offload_dir=folder)

    def from_pretrained_kwargs(self) -> dict:
        """The keyword arguments transformers' from_pretrained takes for this placement."""
        if not self:
            return {}
        kwargs: dict = {"device_map": self.device_map or "auto"}
        if self.max_memory:
            kwargs["max_memory"] = {(int(device) if device.isdigit() else device): size
                                    for device, size in self.max_memory}
        if self.offload_dir:
            kwargs["offload_folder"] = self.offload_dir
            kwargs["offload_state_dict"] = True
        return kwargs


def scratch_offload(placement: Placement, label: str) -> Placement:
    """`placement` offloading into a folder of its own under the user's --offload-dir, removed when the process
    ends: models loaded in one run (the reference, its calibration copy, a model candidate) never write over each
    other's offloaded weights, and nothing is left behind. (Weights read from safetensors are not copied at all:
    accelerate reads them from the model's own files.)"""
    if not placement.offload_dir:
        return placement
    import atexit
    import shutil
    import tempfile

    Path(placement.offload_dir).mkdir(parents=True, exist_ok=True)
    folder = tempfile.mkdtemp(prefix=f"parity-{label}-", dir=placement.offload_dir)
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return placement.within(folder)


def placement_from_options(device_map: str | None, max_memory: str | None, offload_dir: str | None) -> Placement:
    """Validate --device, --max-memory and --offload-dir; one-line errors saying how to fix them."""
    if device_map is not None and device_map not in _DEVICE_MAPS and not re.fullmatch(r"cpu|cuda(:\d+)?|mps|\d+",
                                                                                       device_map):
        raise OptionError(f"--device {device_map!r} is not a strategy ({', '.join(_DEVICE_MAPS)}) "
                          "nor a device (cpu, cuda:0)")
    budget = _parse_max_memory(max_memory) if max_memory is not None else ()
    if offload_dir is not None:
        directory = Path(offload_dir)
        if directory.exists() and not directory.is_dir():
            raise OptionError(f"--offload-dir {offload_dir}: exists and is not a directory; give a directory")
    if budget and device_map is None:
        device_map = "auto"
    return Placement(device_map=device_map, max_memory=budget, offload_dir=offload_dir)


def _parse_max_memory(text: str) -> tuple[tuple[str, str], ...]:
    pairs = []
    for part in text.split(","):
        device, _, size = part.partition("=")
        device, size = device.strip().lower(), size.strip()
        if not device or not size:
            raise OptionError(f"--max-memory {text!r}: write DEVICE=SIZE pairs, e.g. cpu=2GiB,0=20GiB")
        if device not in ("cpu", "disk", "mps") and not device.isdigit():
            raise OptionError(f"--max-memory: device {device!r} must be cpu, mps or a GPU index such as 0")
        match = _SIZE.match(size)
        if match is None or float(match.group(1)) <= 0:
            raise OptionError(f"--max-memory: size {size!r} for {device} must be positive, e.g. 500MB or 2GiB")
        pairs.append((device, f"{match.group(1)}{(match.group(2) or 'B').upper().replace('IB', 'iB')}"))
    return tuple(pairs)
