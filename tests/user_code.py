"""What a user's kernel or factory may do, as code: one behaviour per name, for the guards' tests and fuzzing.

`KERNEL_BEHAVIOURS` are softmax kernels (x, dim) -> output; `FACTORY_BEHAVIOURS` are factories of
the course's Llama. Each is written into a module file by `write_module(directory)`, so that the CLI
imports it as a user's FILE.py:NAME; `expected(name)` says what parity must make of it:
  "pass"    exit 0: the kernel is right
  "fail"    exit 1: a finding (wrong values, wrong type, raised, sys.exit, os._exit in Python)
  "refuse"  exit 2 and one line: the process died, hung, or the input cannot be run
"""

from __future__ import annotations

import random
from pathlib import Path

HEADER = '''
import ctypes, os, signal, sys, time
import numpy as np
import torch
import torch.nn.functional as F

class Odd(BaseException):
    pass

class Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("no")
'''

# name -> (body of `def NAME(x, dim):`, expected outcome)
KERNEL_BEHAVIOURS: dict[str, tuple[str, str]] = {
    "correct": ("return F.softmax(x, dim)", "pass"),
    "correct_noisy": ("print('kernel says hi'); os.write(1, b'raw write to fd 1\\n'); return F.softmax(x, dim)",
                      "pass"),
    "returns_none": ("return None", "fail"),
    "returns_numpy": ("return np.zeros(3)", "fail"),
    "returns_int": ("return 5", "fail"),
    "returns_list": ("return [F.softmax(x, dim)]", "fail"),
    "returns_string": ("return 'softmax'", "fail"),
    "wrong_shape": ("return F.softmax(x, dim)[..., :1]", "fail"),
    "transposed": ("return F.softmax(x, dim).transpose(-1, -2).contiguous()[..., :x.shape[-2]]", "fail"),
    "extra_dim": ("return F.softmax(x, dim)[None]", "fail"),
    "int_tensor": ("return F.softmax(x, dim).to(torch.int32)", "fail"),
    "complex_tensor": ("return F.softmax(x, dim).to(torch.complex64)", "fail"),
    "bool_tensor": ("return F.softmax(x, dim) > 0", "fail"),
    "meta_tensor": ("return torch.empty(x.shape, device='meta')", "fail"),
    "nan": ("return torch.full_like(x, float('nan'))", "fail"),
    "zeros": ("return torch.zeros_like(x)", "fail"),
    "detached": ("return F.softmax(x, dim).detach()", "fail"),
    "float64_out": ("return F.softmax(x.double(), dim)", "pass"),
    "raises_value_error": ("raise ValueError('bad kernel')", "fail"),
    "raises_unprintable": ("raise Unprintable()", "fail"),
    "raises_recursion": ("def f(n): return f(n + 1)\n    return f(0)", "fail"),
    "sys_exit_0": ("sys.exit(0)", "fail"),
    "sys_exit_3": ("sys.exit(3)", "fail"),
    "os_exit_0": ("os._exit(0)", "fail"),
    "base_exception": ("raise Odd('odd')", "fail"),
    "keyboard_interrupt": ("raise KeyboardInterrupt", "fail"),
    "generator_exit": ("raise GeneratorExit", "fail"),
    "c_exit_0": ("ctypes.CDLL(None).exit(0)", "refuse"),
    "c_exit_7": ("ctypes.CDLL(None)._exit(7)", "refuse"),
    "segfault": ("ctypes.string_at(0)", "refuse"),
    "abort": ("os.abort()", "refuse"),
    "sigkill_self": ("os.kill(os.getpid(), signal.SIGKILL)", "refuse"),
    "sleeps": ("time.sleep(1000)", "refuse"),
    "busy_loop": ("while True: pass", "refuse"),
    "closes_stdout": ("try:\n        os.close(1)\n    except OSError:\n        pass\n    return F.softmax(x, dim)",
                      "pass"),
    "modifies_input": ("x.mul_(0); return F.softmax(x, dim)", "fail"),
    "huge_output": ("return torch.empty(2**62, dtype=torch.uint8)", "fail"),
}

# name -> (body of `def NAME():` returning the model, expected outcome of `parity sanity`)
FACTORY_BEHAVIOURS: dict[str, tuple[str, str]] = {
    "correct": ("return llama_course.default_model(config=small())", "pass"),
    "noisy": ("print('factory says hi'); return llama_course.default_model(config=small())", "pass"),
    "returns_none": ("return None", "refuse"),
    "returns_int": ("return 5", "refuse"),
    "returns_class": ("return llama_course.LlamaCourse", "refuse"),
    "raises": ("raise ValueError('no model')", "refuse"),
    "sys_exit": ("sys.exit(0)", "refuse"),
    "os_exit": ("os._exit(0)", "refuse"),
    "base_exception": ("raise Odd('odd')", "refuse"),
    "c_exit": ("ctypes.CDLL(None).exit(0)", "refuse"),
    "sleeps": ("time.sleep(1000)", "refuse"),
    "forward_exits": ("model = llama_course.default_model(config=small())\n"
                      "    model.model.layers[0].mlp.forward = lambda *a, **k: os._exit(0)\n    return model", "fail"),
    "forward_returns_none": ("model = llama_course.default_model(config=small())\n"
                             "    model.model.layers[0].mlp.forward = lambda *a, **k: None\n    return model", "fail"),
    "no_config": ("model = llama_course.default_model(config=small())\n    del model.config\n    return model",
                  "refuse"),
}

FACTORY_HEADER = HEADER + '''
sys.path.insert(0, {examples!r})
import llama_course

def small():
    return llama_course.course_config(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, vocab_size=64)
'''


def write_module(directory: Path, *, factories: bool = False, examples: str = "") -> Path:
    behaviours = FACTORY_BEHAVIOURS if factories else KERNEL_BEHAVIOURS
    signature = "()" if factories else "(x, dim)"
    source = (FACTORY_HEADER.format(examples=examples) if factories else HEADER) + "".join(
        f"\ndef {name}{signature}:\n    {body}\n" for name, (body, _) in behaviours.items())
    path = directory / ("factories.py" if factories else "kernels_under_test.py")
    path.write_text(source)
    return path


# A behaviour that changes nothing where its condition holds: softmax's input is (..., T, T), so its last
# dimension is 1 only when T is, and a 1 x 1 matrix is its own transpose.
NO_OPS = {("transposed", "x.shape[-1] == 1")}


def random_kernel(rng: random.Random) -> tuple[str, str, str]:
    """A kernel made of one to three behaviours chained by conditions on the input (which case it is):
    (name, body, expected outcome of the whole run). The worst outcome of its parts is the run's."""
    names = rng.sample(sorted(KERNEL_BEHAVIOURS), rng.randint(1, 3))
    # distinct conditions, each true in some case and false in others: every behaviour runs in some case
    conditions = rng.sample(["x.shape[-1] == 1", "x.dtype == torch.float16", "x.abs().max() > 100"], len(names) - 1)
    lines = []
    for name, condition in zip(names[:-1], conditions):
        lines.append(f"if {condition}:\n        {KERNEL_BEHAVIOURS[name][0].replace(chr(10), chr(10) + '    ')}")
    lines.append(KERNEL_BEHAVIOURS[names[-1]][0])
    outcomes = [KERNEL_BEHAVIOURS[name][1] for name in names]
    for index, (name, condition) in enumerate(zip(names[:-1], conditions)):
        if (name, condition) in NO_OPS:
            outcomes[index] = "pass"
    worst = "refuse" if "refuse" in outcomes else "fail" if "fail" in outcomes else "pass"
    return "+".join(names), "\n    ".join(lines), worst


# A factory of the small course model with one module's forward replaced: name -> (inner body, outcome).
FORWARD_BEHAVIOURS: dict[str, tuple[str, str]] = {
    "correct": ("return original(*args, **kwargs)", "pass"),
    "noisy": ("print('module says hi'); os.write(1, b'module fd 1\\n'); return original(*args, **kwargs)", "pass"),
    "returns_none": ("return None", "fail"),
    "returns_int": ("return 5", "fail"),
    "returns_numpy": ("return np.zeros(3)", "fail"),
    "raises": ("raise ValueError('bad module')", "fail"),
    "unprintable": ("raise Unprintable()", "fail"),
    "sys_exit": ("sys.exit(0)", "fail"),
    "os_exit": ("os._exit(0)", "fail"),
    "base_exception": ("raise Odd('odd')", "fail"),
    "keyboard_interrupt": ("raise KeyboardInterrupt", "fail"),
    "nan": ("out = original(*args, **kwargs)\n        first = out[0] if isinstance(out, tuple) else out\n"
            "        first = first * float('nan')\n"
            "        return (first, *out[1:]) if isinstance(out, tuple) else first", "fail"),
    "c_exit": ("ctypes.CDLL(None).exit(0)", "refuse"),
    "segfault": ("ctypes.string_at(0)", "refuse"),
    "abort": ("os.abort()", "refuse"),
    "sleeps": ("time.sleep(1000)", "refuse"),
}
# The modules whose forward the course model calls (its projections are used through F.linear on their
# weights, so a projection's own forward is never called and replacing it changes nothing).
COMPONENTS = ("model", "model.lm_head", "model.model.embed_tokens", "model.model.norm",
              "model.model.layers[0].input_layernorm", "model.model.layers[0].self_attn",
              "model.model.layers[0].mlp")


def random_factory(rng: random.Random) -> tuple[str, str, str]:
    """(name, body of the factory, expected outcome of `parity sanity`)."""
    behaviour = rng.choice(sorted(FORWARD_BEHAVIOURS))
    component = rng.choice(COMPONENTS)
    inner, outcome = FORWARD_BEHAVIOURS[behaviour]
    body = ("model = llama_course.default_model(config=small())\n"
            f"    target = {component}\n"
            "    original = target.forward\n"
            "    def forward(*args, **kwargs):\n"
            f"        {inner}\n"
            "    target.forward = forward\n"
            "    return model")
    return f"{behaviour}@{component}", body, outcome
