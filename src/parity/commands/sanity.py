"""parity sanity on the command line: the 11 component tests of a hand-written causal LM (parity/sanity/)."""

from __future__ import annotations

from parity.commands import options
from parity.commands.output import EXIT_DIVERGED, EXIT_PASS, progress
from parity.core.errors import OptionError


def add_arguments(parser) -> None:
    parser.add_argument("candidate", metavar="CANDIDATE", help="FILE.py:FACTORY or module:FACTORY returning the model")
    parser.add_argument("--reference", metavar="MODEL", help="a transformers model directory (default: transformers' "
                        "class for the candidate's config, with the candidate's weights)")
    parser.add_argument("--json", metavar="OUT", help="write the results as JSON here")
    options.deprecated(parser, "-o", "--json", "json")
    options.deprecated(parser, "--output", "--json", "json")
    parser.add_argument("-v", "--verbose", action="store_true", help="a table of every test, not one line")
    parser.add_argument("--dtype", choices=options.DTYPES, help="both models at this precision (default float32)")
    parser.add_argument("--device", help="cpu (default), cuda, cuda:N")
    parser.add_argument("--batch-size", type=options.positive_int, default=2, help="random inputs' batch (default 2)")
    parser.add_argument("--seq-length", type=options.positive_int, default=32,
                        help="random inputs' length (default 32)")
    parser.add_argument("--rtol", type=options.tolerance, help="relative tolerance (default 1e-3 in float32; "
                                                               "needs --atol)")
    parser.add_argument("--atol", type=options.tolerance, help="absolute tolerance (default 1e-4 in float32; "
                                                               "needs --rtol)")
    parser.add_argument("--seed", type=options.count, default=0, help="seed of the random inputs")
    parser.add_argument("--force", action="store_true", help="replace the output file if it exists")
    parser.add_argument("--strict", action="store_true",
                        help="a test that cannot run on the candidate (not checked) fails the run")
    parser.add_argument("--timeout", type=options.seconds, default=300.0,
                        help="seconds one test may take (default 300); the candidate runs in a child process")


def run(args) -> int:
    """Run 11 component tests of a hand-written causal LM against transformers' own implementation.

    CANDIDATE is FILE.py:FACTORY or module:FACTORY, returning a torch.nn.Module:
    either with transformers' causal-LM interface and module names, or a port
    with names of its own whose `parity_taps` say where its checkpoints live (its
    modules are then found through them; docs/porting.md). Its config is its
    `.config` (a dict with model_type, or a transformers config), else --reference
    MODEL's. The reference is transformers' class for that config with the
    candidate's weights (or, with --reference DIR, that model, whose weights are
    loaded into the candidate). Tests: structure, norm, rope, attention, mlp,
    decoder_layer, forward, loss, kv_cache (through the cache argument the forward
    names: past_key_values, cache, ...), gradients, stability. A test the candidate
    gives nothing to (no labels for the loss, no separate MLP module) is not
    checked and named. Exit 0 when none fails, 1 otherwise (--strict: also when
    one is not checked).
    """
    from parity.capture.candidate import parse_candidate
    from parity.core.tolerances import user_tolerance
    from parity.report import registry
    from parity.sanity import SanityConfig
    from parity.sanity.child import run_sanity_in_child

    tolerance = user_tolerance(args.atol, args.rtol)
    if args.seq_length < 2:
        raise OptionError("--seq-length must be at least 2 (the loss and the cache test predict a next token)")
    settings = SanityConfig(batch_size=args.batch_size, seq_length=args.seq_length, dtype=args.dtype or "float32", strict=args.strict,
                            device=options.torch_device(args.device), seed=args.seed,
                            rtol=tolerance.rtol if tolerance else None, atol=tolerance.atol if tolerance else None)
    parse_candidate(args.candidate).require(("module",)).check()   # a candidate that is no module is said here
    if args.json:
        from parity.core.files import check_output_path

        check_output_path(args.json, overwrite=args.force, option="--json")
    with progress() as steps:   # in a child process: the candidate's exit, hang or prints are not parity's
        steps.step(f"building the candidate from {args.candidate}")
        result = run_sanity_in_child(args.candidate, settings, reference=args.reference, timeout_s=args.timeout,
                                     progress=steps, labels={"candidate": args.candidate,
                                                             "reference": args.reference or "transformers"})
    if args.json:
        registry.write(result, "json", args.json, overwrite=args.force)
    registry.show(result, verbose=args.verbose, output=args.json)
    return EXIT_PASS if result else EXIT_DIVERGED
