"""parity kernel on the command line: one kernel of a port against torch (parity/kernel/)."""

from __future__ import annotations

from parity.commands import options
from parity.commands.output import EXIT_DIVERGED, EXIT_PASS, progress


def add_arguments(parser) -> None:
    parser.add_argument("op", metavar="OP", help="rms_norm, layer_norm, softmax, silu, gelu, gelu_tanh, linear, "
                        "embedding, cross_entropy, attention, rope, swiglu")
    parser.add_argument("candidate", metavar="CANDIDATE", help="FILE.py:FUNCTION or module:FUNCTION")
    parser.add_argument("--json", metavar="OUT", help="also write the JSON report here ('-' for standard output only)")
    parser.add_argument("--lengths", default="1,13,64,127,257", help="sequence lengths (default 1,13,64,127,257)")
    parser.add_argument("--dtypes", default="float32,bfloat16,float16", help="default float32,bfloat16,float16")
    parser.add_argument("--no-backward", action="store_true", help="forward only")
    parser.add_argument("--bench", action="store_true", help="also time the candidate against torch (longest length)")
    parser.add_argument("--device", help="cpu (default), cuda, cuda:N")
    parser.add_argument("--force", action="store_true", help="replace the output file if it exists")
    parser.add_argument("--timeout", type=options.seconds, default=60.0,
                        help="seconds one case may take (default 60); the kernel runs in a child process")


def run(args) -> int:
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
    from parity.kernel import KernelOptions
    from parity.kernel.child import run_kernel_in_child
    from parity.kernel.ops import get_op
    from parity.report import registry

    get_op(args.op)
    settings = KernelOptions(lengths=options.int_list(args.lengths, "--lengths"),
                             dtypes=options.dtype_list(args.dtypes), backward=not args.no_backward, bench=args.bench,
                             device=options.torch_device(args.device))
    if args.json and args.json != "-":
        from parity.core.files import check_output_path

        check_output_path(args.json, overwrite=args.force, option="--json")
    with progress() as steps:   # in a child process: the kernel's exit, hang or prints are not parity's
        result = run_kernel_in_child(args.op, args.candidate, settings, timeout_s=args.timeout, progress=steps)
    if args.json == "-":
        registry.write(result, "json", "-")
    else:
        if args.json:
            registry.write(result, "json", args.json, overwrite=args.force)
        registry.show(result)
    return EXIT_PASS if result else EXIT_DIVERGED
