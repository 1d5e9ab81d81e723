"""The command line's one vocabulary: the options commands share, their values checked before any work starts.

An option means one thing in every command that takes it:

    --prompt TEXT / --tokens 1,2,3   the input, tokenized by the reference's tokenizer or fed as given
    --dtype D                       the precision the reference (the models, for sanity and bench) runs at
    --device D                      where models run: cpu, cuda, cuda:N, or accelerate's auto/balanced/sequential
    --reference MODEL               the reference model, where it is not the first argument
    --json OUT                      the JSON report ('-': standard output alone); --html, --junit, --markdown
    -o / --output PATH              the command's own product: a trace, a directory of files
    --force                         replace output files that exist
    --checkpoints GLOBS             only these checkpoints

Spellings of earlier releases (--device-map, sanity's -o OUT.json, repro's --model and
--reference TRACE, tokens' --ids) are hidden aliases for one release, with a note.

Each `type=` function below turns one option's text into its value or raises
argparse.ArgumentTypeError, which the parser prints as one line naming the
option ("argument --top-p: must be a number in (0, 1], got 2"). `check_outputs`
checks every path a command will write, right after parsing, so that a check that
loads a model for a minute does not fail only when it comes to write its report.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from parity.core.errors import OptionError
from parity.core.files import check_output_directory, check_output_path

# --- one value ------------------------------------------------------------------


def _number(text: str, kind: type = float):
    try:
        value = kind(text)
    except ValueError:
        noun = "a whole number" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"must be {noun}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """A count of one or more (tokens to generate, top-k)."""
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def count(text: str) -> int:
    """A count of zero or more (0 turns the step off)."""
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def seconds(text: str) -> float:
    """A positive, finite number of seconds."""
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def positive(text: str) -> float:
    """A positive, finite number (a temperature)."""
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def probability(text: str) -> float:
    """A probability mass in (0, 1] (top-p)."""
    value = _number(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text!r}")
    return value


def tolerance(text: str) -> float:
    """An absolute or relative tolerance: finite, 0 or more."""
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text!r}")
    return value


def checkpoint_globs(text: str) -> str:
    """Comma-separated globs, each matching some canonical checkpoint name ('layers.*.q,logits')."""
    from parity.core.names import GLOBAL_KINDS, LAYER_KINDS, WEIGHT_SUFFIXES, parse, select

    globs = [glob.strip() for glob in text.split(",") if glob.strip()]
    if not globs:
        raise argparse.ArgumentTypeError("is empty; give checkpoint names or globs, e.g. 'layers.*.q,logits'")
    names = [*GLOBAL_KINDS, *(f"layers.{i}.{kind}" for i in range(_LAYERS_NAMED) for kind in LAYER_KINDS)]
    for glob in globs:
        glob = glob.removeprefix("!")   # an exclusion names checkpoints as an inclusion does
        bare = next((glob[: -len(suffix)] for suffix in WEIGHT_SUFFIXES if glob.endswith(suffix)), glob)
        if not select(names, bare) and parse(bare) is None:
            raise argparse.ArgumentTypeError(f"{glob!r} matches no checkpoint name; names are like embed, "
                                             "layers.0.q, layers.3.mlp_out, logits (see docs/trace-format.md)")
    return text


_LAYERS_NAMED = 128   # layers whose names a glob is tried against (a literal name of any layer passes too)


def require_selection(names, globs: str | None, where: str) -> None:
    """Refuse --checkpoints that select none of the names a trace holds (comparing nothing is no pass)."""
    from parity.core.names import in_flow_order, select

    if globs is not None and names and not select(names, globs):
        held = in_flow_order(names)
        raise OptionError(f"--checkpoints {globs!r} selects none of the {len(held)} checkpoints in {where} "
                          f"({', '.join(held[:3])}, ...); give globs that match some of them")


def conventions(text: str) -> frozenset[str]:
    """--strict: conventions to hold as failures ('all', or a comma-separated list of core/conventions.py's)."""
    from parity.core.conventions import CONVENTIONS

    names = {name.strip() for name in text.split(",") if name.strip()}
    if names == {"all"}:
        return frozenset(CONVENTIONS)
    unknown = sorted(names - set(CONVENTIONS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{', '.join(unknown) or 'nothing'}: give 'all' or some of "
                                         f"{', '.join(CONVENTIONS)}")
    return frozenset(names)


def taps_name(text: str) -> str:
    """A built-in checkpoint mapping's name."""
    from parity.core.names import FAMILY_TAPS

    if text not in FAMILY_TAPS:
        raise argparse.ArgumentTypeError(f"no built-in mapping named {text!r}; choose one of {', '.join(FAMILY_TAPS)}")
    return text


def function_spec(text: str) -> str:
    """FILE.py:FUNCTION or package.module:FUNCTION; a .py file must exist."""
    target, colon, name = text.rpartition(":")
    if not colon or not target or not name.isidentifier():
        raise argparse.ArgumentTypeError(f"{text!r} is not FILE.py:FUNCTION or module:FUNCTION; "
                                         "give it as, e.g., my_sampler.py:sample")
    if target.endswith(".py") and not Path(target).is_file():
        raise argparse.ArgumentTypeError(f"{target}: no such file; give an existing FILE.py:FUNCTION")
    return text


def token_ids(text: str | None, option: str = "--tokens") -> list[int] | None:
    """'1,2,3' as ids; a negative id is named."""
    if text is None:
        return None
    parts = [part for part in text.replace(" ", "").split(",") if part]
    try:
        ids = [int(part) for part in parts]
    except ValueError:
        bad = next(part for part in parts if not _is_int(part))
        raise OptionError(f"{option}: {bad[:40]!r} is not an integer; give comma-separated integers like 1,2,3") from None
    if not ids:
        raise OptionError(f"{option} is empty; give at least one token id")
    negative = next((i for i in ids if i < 0), None)
    if negative is not None:
        raise OptionError(f"{option} holds the negative id {negative}; give token ids of 0 or more")
    return ids


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


# --- the options several commands share -----------------------------------------------

DTYPES = ("float64", "float32", "bfloat16", "float16")


class Deprecated(argparse.Action):
    """An earlier release's spelling of an option: stored as the new one, with a note to say so."""

    def __init__(self, option_strings, dest, *, new: str, nargs=None, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=nargs, help=argparse.SUPPRESS, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, values)
        notes = getattr(namespace, "deprecations", None) or []
        notes.append(f"{option_string} is now {self.new}; the old spelling goes in the next release")
        namespace.deprecations = notes


def deprecated(parser, old: str, new: str, dest: str, **kwargs) -> None:
    parser.add_argument(old, dest=dest, action=Deprecated, new=new, **kwargs)


def add_input(parser, *, dtype_help: str = "the reference's precision (default float32)") -> None:
    """--prompt, --tokens, --dtype and where the reference runs (--device, --max-memory, --offload-dir)."""
    parser.add_argument("--prompt", help="text to tokenize with the reference's tokenizer")
    parser.add_argument("--tokens", help="token ids, fed as given: 1,2,3")
    parser.add_argument("--dtype", choices=DTYPES, help=dtype_help)
    parser.add_argument("--device", help="where the reference runs: cpu, cuda:N, or accelerate's auto, balanced, "
                                         "sequential")
    deprecated(parser, "--device-map", "--device", "device")
    parser.add_argument("--max-memory", help="memory per device, e.g. cpu=2GiB,0=20GiB (implies --device auto)")
    parser.add_argument("--offload-dir", help="where weights beyond --max-memory are offloaded to disk")


def add_tolerances(parser) -> None:
    parser.add_argument("--atol", type=tolerance, help="absolute tolerance for every checkpoint (needs --rtol)")
    parser.add_argument("--rtol", type=tolerance, help="relative tolerance for every checkpoint (needs --atol)")
    parser.add_argument("--checkpoints", metavar="GLOB", type=checkpoint_globs,
                        help="only these checkpoints, e.g. 'layers.*.q,logits'; a leading ! leaves some out: "
                             "'*,!*.attn_probs'")
    parser.add_argument("--strict", type=conventions, nargs="?", const=conventions("all"), default=frozenset(),
                        metavar="CONVENTIONS", help="hold these conventions as failures instead of adapting them: "
                                                    "layout, vocab_padding, logit_shift, residual_pair, rope_pairs, "
                                                    "logprob_shift (default: all)")


def add_reports(parser, *, files: bool = True) -> None:
    """--json, --force, and (where the result has them) --html, --junit, --markdown."""
    parser.add_argument("--json", metavar="OUT", help="also write the JSON report here ('-' for standard output only)")
    parser.add_argument("--force", action="store_true", help="replace output files that exist")
    if files:
        parser.add_argument("--html", metavar="OUT.html", help="also write a self-contained HTML report here")
        parser.add_argument("--junit", metavar="OUT.xml", help="also write a JUnit XML report here (for CI)")
        parser.add_argument("--markdown", metavar="OUT.md",
                            help="also write a short Markdown summary here (CI step summary, PR comment)")


def torch_device(device: str | None) -> str:
    """The device asked for, checked: 'cpu', 'cuda', 'cuda:1', 'mps'."""
    if device is None or device == "cpu":
        return "cpu"
    import torch

    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise OptionError(f"--device {device} is not a torch device; use cpu, cuda or cuda:N") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise OptionError(f"--device {device}: no CUDA device is available here; use --device cpu")
    return device


def placement(args):
    """Where the reference runs (accelerate's big-model inference), from --device, --max-memory, --offload-dir."""
    from parity.capture.hf.placement import placement_from_options

    return placement_from_options(args.device, args.max_memory, args.offload_dir)


def one_input(prompt, tokens) -> None:
    if (prompt is None) == (tokens is None):
        raise OptionError("give exactly one of --prompt TEXT or --tokens 1,2,3")


def server_option(text: str) -> tuple[str, object]:
    """KEY=VALUE of --server-option: VALUE read as JSON where it is (1.0, true, [..]), else as text."""
    import json

    key, equals, value = text.partition("=")
    key = key.strip()
    if not equals or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. repeat_penalty=1.0), got {text!r}")
    if key in RESERVED_SERVER_FIELDS:
        raise argparse.ArgumentTypeError(f"{key} is set by parity itself ({RESERVED_SERVER_FIELDS[key]})")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


RESERVED_SERVER_FIELDS = {"prompt": "give --prompt", "max_tokens": "give -n/--max-tokens",
                          "model": "give --server-model", "echo": "the check needs the prompt echoed",
                          "logprobs": "the check needs the top-k log-probabilities", "stream": "the check reads one answer",
                          "messages": "give --prompt (sent as one user message) and --system",
                          "top_logprobs": "the check asks for the top 5"}


def int_list(text: str, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise OptionError(f"{option} must be comma-separated integers like 1,13,64, got '{text}'") from None
    if not values or min(values) < 1:
        raise OptionError(f"{option} needs positive integers, got '{text}'")
    return values


def dtype_list(text: str) -> tuple[str, ...]:
    dtypes = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [dtype for dtype in dtypes if dtype not in DTYPES]
    if unknown or not dtypes:
        raise OptionError(f"--dtypes: unknown {', '.join(unknown) or 'empty list'}; choose from float32, bfloat16, "
                          "float16, float64")
    return dtypes


# --- the paths a command writes -----------------------------------------------------


def check_outputs(args) -> None:
    """Check every output of the parsed command before it runs; raises OutputError saying how to fix it."""
    from parity.report import files

    overwrite = bool(getattr(args, "force", False))
    reports = {option: getattr(args, option, None) for option in ("json", *files.FORMATS)}
    written = dict(reports)
    if getattr(args, "output_kind", None) is not None:
        written["o"] = getattr(args, "output", None)
    if getattr(args, "save_traces", None):
        written["save-traces"] = args.save_traces
    never_over_inputs(written, args)
    offload = getattr(args, "offload_dir", None)
    if offload is not None and Path(offload).exists() and not Path(offload).is_dir():
        raise OptionError(f"--offload-dir {offload} is a file, not a directory; give a directory (it is made when "
                          "missing)")
    files.check(reports, overwrite=overwrite)
    kind = getattr(args, "output_kind", None)
    if kind == "trace":
        check_trace_output(args.output, overwrite=overwrite, option="-o")
    elif kind == "directory":
        check_output_directory(args.output, overwrite=overwrite, option="-o")
    elif kind == "file" and args.output is not None:
        check_output_path(args.output, overwrite=overwrite, option="-o")
    save_traces = getattr(args, "save_traces", None)
    if save_traces is not None:
        if save_traces == "":
            raise OptionError("--save-traces is empty; give a directory to write the two traces in")
        check_output_directory(save_traces, overwrite=True, option="--save-traces")
        for role in ("reference", "candidate"):
            check_output_path(Path(save_traces) / f"{role}.safetensors", overwrite=overwrite, option="--save-traces")


# The arguments that name what a run reads: a report or trace written over one would destroy its input.
INPUT_ARGUMENTS = ("model", "candidate", "reference", "reference_trace", "calibrate", "weights_file", "sampler")


def never_over_inputs(outputs: dict, args) -> None:
    """OptionError when an output path is a file the run reads (even with --force): the reference trace,
    the candidate's file, the model, a calibration trace, a candidate's FILE.py."""
    inputs = {}
    for name in INPUT_ARGUMENTS:
        values = getattr(args, name, None)
        for value in values if isinstance(values, (list, tuple)) else [values]:
            if isinstance(value, str) and value:
                inputs[_resolved(_file_of(value))] = (name, value)
    for option, value in outputs.items():
        if not value or value == "-":
            continue
        hit = inputs.get(_resolved(value))
        if hit is not None:
            raise OptionError(f"--{option} {value} would write over {hit[1]}, which this run reads ({hit[0]}); "
                              "give another path (--force never replaces an input)")


def _file_of(spec: str) -> str:
    """The file a spec names: llamacpp:FILE.gguf -> FILE.gguf, dist:N:FILE.py:FACTORY and FILE.py:FACTORY ->
    FILE.py; a path as it is."""
    if Path(spec).exists():
        return spec
    spec = spec.removeprefix("llamacpp:")
    if spec.startswith("dist:"):
        spec = spec.split(":", 2)[-1]
    head, colon, _ = spec.rpartition(":")
    return head if colon and head.endswith(".py") else spec


def _resolved(path: str) -> Path:
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError, ValueError):
        return Path(path).absolute()


def check_trace_output(path: str, *, overwrite: bool, option: str) -> Path:
    if path and Path(path).suffix != ".safetensors" and not Path(path).is_dir():
        raise OptionError(f"{path}: traces are written as .safetensors; name the {option} file '*.safetensors'")
    return check_output_path(path, overwrite=overwrite, option=option)
