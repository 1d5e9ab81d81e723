"""Node.js packages the install puts in parity's cache (scripts/install.sh), for the tests that run them."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import STRICT
from gguf_models import cache_root


def node_modules(package: str) -> Path:
    """The node_modules holding `package`; skips the test (fails under PARITY_STRICT=1) when node or it is missing."""
    directory = cache_root() / "node" / "node_modules"
    missing = ("node is not installed" if shutil.which("node") is None
               else None if (directory / package / "package.json").is_file()
               else f"{package} is not installed in {directory.parent} (scripts/install.sh installs it)")
    if missing:
        if STRICT:
            pytest.fail(missing)
        pytest.skip(missing)
    return directory


def run_node(script: Path, *args, modules: Path) -> subprocess.CompletedProcess:
    """`node script args...` with `modules` on NODE_PATH; fails the test with node's error when it fails."""
    result = subprocess.run(["node", str(script), *map(str, args)], capture_output=True, text=True, timeout=300,
                            env={"PATH": os.environ["PATH"], "NODE_PATH": str(modules)})
    assert result.returncode == 0, result.stderr[-2000:]
    return result
