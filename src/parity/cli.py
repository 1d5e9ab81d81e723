"""parity: find where a port of a transformer LM first parts ways with its reference.

Exit codes: 0 parity holds, 1 a divergence was found, 2 unusable input.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
import warnings

from parity.core.errors import OptionError, ParityError
from parity.core.printable import printable

EXIT_UNUSABLE, EXIT_INTERRUPTED = 2, 130

# Each command is a module of parity.commands with add_arguments(parser) and run(args) -> exit code; the first
# paragraph of run's docstring is the command's --help summary, the whole docstring its description.
COMMANDS = ("capture", "compare", "check", "generate", "tokens", "repro", "sanity", "kernel", "bench", "cache")


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line and exit code 2."""

    def error(self, message: str) -> None:
        raise OptionError(f"{message} (see '{self.prog} --help')")


class _VersionAction(argparse.Action):
    """--version: the installed version, looked up only when asked (importlib.metadata costs ~20 ms a run)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0,
                         help=help or "show the program's version number and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        from importlib.metadata import PackageNotFoundError, version

        try:
            found = version("parity")
        except PackageNotFoundError:
            found = "unknown"
        print(f"parity {found}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="parity", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action=_VersionAction)
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        command = importlib.import_module(f"parity.commands.{name}")
        description = inspect.getdoc(command.run)
        subparser = subparsers.add_parser(name, help=description.split("\n\n")[0], description=description,
                                          formatter_class=argparse.RawDescriptionHelpFormatter)
        command.add_arguments(subparser)
        subparser.set_defaults(run=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    from parity.commands.options import check_outputs

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if not hasattr(args, "run"):
            parser.print_help()
            return EXIT_UNUSABLE
        for note in getattr(args, "deprecations", None) or ():
            print(f"parity: note: {note}", file=sys.stderr)
        check_outputs(args)   # every path the command writes, before the long work, not after it
        with warnings.catch_warnings():
            # numpy's RuntimeWarnings (overflow, invalid value) are not for the user: parity counts
            # non-finite values itself and reports them as results.
            warnings.simplefilter("ignore", RuntimeWarning)
            return args.run(args)
    except ParityError as error:
        print(f"parity: error: {printable(error)}", file=sys.stderr)  # one line: newlines and escapes replaced
        return EXIT_UNUSABLE
    except KeyboardInterrupt:
        print("parity: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
