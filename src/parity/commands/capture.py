"""parity capture: one forward pass of a model, every checkpoint written to a trace file."""

from __future__ import annotations

from contextlib import nullcontext

from parity.commands import options
from parity.commands.output import EXIT_PASS, progress
from parity.core.errors import OptionError


def add_arguments(parser) -> None:
    parser.add_argument("model", metavar="MODEL",
                        help="model directory or .gguf file (transformers), llamacpp:FILE.gguf, or FILE.py:FACTORY")
    options.add_input(parser, dtype_help="precision to run a transformers model at (default float32)")
    parser.add_argument("-o", "--output", required=True, help="trace to write (.safetensors)")
    parser.add_argument("--checkpoints", metavar="GLOB", type=options.checkpoint_globs,
                        help="only these checkpoints, e.g. 'layers.*.q,logits'")
    parser.add_argument("--force", action="store_true", help="replace the output file if it exists")
    parser.add_argument("--emulate", choices=("llamacpp",),
                        help="round as llama.cpp does: activations, F16 KV cache, GELU table (a calibration run)")
    parser.add_argument("--weights", action="store_true", help="also store each tapped module's parameters")
    parser.add_argument("--no-raw", action="store_true",
                        help="leave out raw.<module> outputs (modules with no canonical checkpoint)")
    parser.set_defaults(output_kind="trace")


def run(args) -> int:
    """Capture a trace from a model: a transformers model directory or .gguf file, or any candidate.

    Runs one forward pass over --prompt (tokenized by the model's tokenizer) or
    --tokens (fed as given, no BOS added) and writes every canonical checkpoint
    to a parity-trace/2 safetensors file. A transformers model is written as its
    checkpoints arrive; llama.cpp (llamacpp:FILE.gguf) and PyTorch modules
    (FILE.py:FACTORY, with --tokens) are captured whole, then written.
    """
    from parity.capture.candidate import parse_candidate

    tokens = options.token_ids(args.tokens)
    options.one_input(args.prompt, tokens)
    parsed = parse_candidate(args.model)
    if not parsed.offers("logits"):   # a trace or a server: nothing here runs a forward pass
        raise OptionError(f"{args.model}: not a model (no config.json, not a .gguf file); give a model directory, "
                          "a .gguf file, llamacpp:FILE.gguf or FILE.py:FACTORY")
    with progress() as steps:
        if parsed.offers("stream"):
            names, token_count = _stream(args, tokens, steps)
        else:
            names, token_count = _capture_whole(args, tokens, steps)
    raw = sum(name.startswith("raw.") for name in names)
    modules = f" and {raw} raw module outputs" if raw else ""
    print(f"wrote {len(names) - raw} checkpoints{modules} over {token_count} tokens to {args.output}")
    return EXIT_PASS


def _stream(args, tokens, steps) -> tuple[list[str], int]:
    """A transformers model captured straight into the trace file: the names written, and the token count."""
    from parity.capture.hf.model import load_model, quiet_transformers

    if args.emulate == "llamacpp" and not str(args.model).endswith(".gguf"):
        raise OptionError("--emulate llamacpp needs MODEL to be the .gguf file (its weight types set the rounding); "
                          "give the .gguf as MODEL")
    quiet_transformers()
    dtype = args.dtype or "float32"
    steps.step(f"loading {args.model} ({dtype})")
    reference = load_model(args.model, dtype=dtype, placement=options.placement(args))
    ids = tokens if tokens is not None else reference.tokenize(args.prompt)
    rounding = nullcontext()
    if args.emulate == "llamacpp":
        from parity.capture.llamacpp.numerics import llamacpp_numerics

        rounding = llamacpp_numerics(reference.model, args.model)
    steps.step(f"capturing the reference over {len(ids)} tokens into {args.output}"
               + (" with llama.cpp's rounding" if args.emulate else ""))
    with rounding:
        names = reference.capture_to_file(ids, args.output, overwrite=args.force, checkpoints=args.checkpoints,
                                          prompt=args.prompt, weights=args.weights, raw=not args.no_raw,
                                          metadata={"emulates": args.emulate} if args.emulate else None)
    return names, len(ids)


def _capture_whole(args, tokens, steps) -> tuple[list[str], int]:
    """Any other candidate: traced in memory, then written."""
    from parity.capture.candidate import CandidateContext, TraceRequest, open_candidate
    from parity.core.trace import save_trace

    if args.emulate:
        raise OptionError("--emulate is for a transformers model (a .gguf file as MODEL)")
    context = CandidateContext(dtype=args.dtype, progress=steps)
    with open_candidate(args.model, context, needs=("trace",)) as candidate:
        ids = tokens if tokens is not None else candidate.tokenize(args.prompt)
        trace = candidate.trace(ids, TraceRequest(checkpoints=args.checkpoints, weights=args.weights,
                                                  raw=not args.no_raw, prompt=args.prompt), steps)
    steps.step(f"writing {args.output}")
    save_trace(trace, args.output, overwrite=args.force)
    return trace.names, len(trace.tokens or ids)
