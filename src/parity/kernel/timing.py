"""Kernel timing: medians after warm-up, the candidate against the PyTorch function at the same dtype."""

from __future__ import annotations

import statistics
import time

import torch

WARMUP, REPEATS = 5, 30


def median_ms(function, args: list, kwargs: dict, device: str) -> float:
    """The median wall time of one call, in milliseconds, after WARMUP calls (forward only, no autograd)."""
    synchronize = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    times = []
    with torch.no_grad():
        for index in range(WARMUP + REPEATS):
            synchronize()
            start = time.perf_counter()
            function(*args, **kwargs)
            synchronize()
            if index >= WARMUP:
                times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def compare_speed(op, candidate, case, dtype: str, device: str) -> dict:
    """Candidate and reference (torch.nn.functional at `dtype`) on one case: medians and the speedup."""
    tensors = {name: (t.to(getattr(torch, dtype)) if t.is_floating_point() else t).to(device)
               for name, t in case.inputs.items()}
    args, kwargs = op.arguments(case, tensors)
    candidate_ms = median_ms(candidate, args, kwargs, device)
    reference_ms = median_ms(op.reference, args, kwargs, device)
    return {"dims": case.dims, "dtype": dtype, "device": device, "warmup": WARMUP, "repeats": REPEATS,
            "candidate_ms": candidate_ms, "reference_ms": reference_ms,
            "speedup": reference_ms / candidate_ms if candidate_ms > 0 else None}
