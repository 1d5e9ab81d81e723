"""`parity cache verify | clear`: the dequantized-GGUF cache, checked file by file or removed.

verify hashes every file of every entry against the entry's manifest and names each
damaged entry (a run rebuilds a damaged entry by itself; verify changes nothing).
clear removes every entry, the digest index and leftovers of interrupted runs;
files parity did not make are left where they are, and named.
"""

from __future__ import annotations

from parity.capture.gguf import cache as gguf_cache
from parity.core.printable import printable


def add_arguments(parser) -> None:
    parser.add_argument("action", choices=("verify", "clear"), help="verify: check every file; clear: remove all")


def run(args) -> int:
    """Check or clear the cache of dequantized GGUF files.

    verify: hash every file of every cached copy against its manifest and name
    each damaged one (exit 1 when one is; a run rebuilds a damaged copy by
    itself). clear: remove every cached copy. The cache is PARITY_CACHE's (default
    ~/.cache/parity) dequantized/ folder.
    """
    code, lines = run_cache(args.action)
    print("\n".join(lines))
    return code


def run_cache(action: str) -> tuple[int, list[str]]:
    """(exit code, lines to print) for `parity cache ACTION`."""
    root = gguf_cache.cache_root()
    if action == "verify":
        checks = gguf_cache.verify_all()
        if not checks:
            return 0, [f"{printable(root)}: no entries"]
        lines = [f"{printable(check.name)}  {_size(check.size_bytes)}  "
                 + ("whole" if check else f"damaged: {printable(check.problem)}") for check in checks]
        damaged = sum(not check for check in checks)
        total = f"{len(checks)} entr{'y' if len(checks) == 1 else 'ies'}"
        lines.append(f"{printable(root)}: {total}, all whole" if not damaged else
                     f"{printable(root)}: {damaged} of {total} damaged; a run rebuilds a damaged entry from its GGUF, "
                     "or 'parity cache clear' removes them all")
        return (1 if damaged else 0), lines
    removed, freed, others = gguf_cache.clear()
    lines = [f"{printable(root)}: removed {removed} entr{'y' if removed == 1 else 'ies'} ({_size(freed)})"]
    if others:
        lines.append(f"left alone (not made by parity): {', '.join(printable(name) for name in others[:10])}")
    return 0, lines


def _size(size_bytes: int) -> str:
    return f"{size_bytes / 2**20:,.1f} MiB"
