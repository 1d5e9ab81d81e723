"""Make docs/report.png: the HTML report of a planted bug, rendered by headless Chromium.

A 12-layer random-weight Llama (tests/tiny_models.py) is the reference; the
candidate is examples/llama_port.py in bfloat16 with the key projection of
layer 6 sign-flipped. `parity check` calibrates to bfloat16's noise and writes
the report; Chromium screenshots its top. Run: python scripts/report_screenshot.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "src")]

PORT = """
import torch
import llama_port


def build(path):
    return llama_port.build(path, llama_port.Bugs(negate_k_layer=6), dtype=torch.bfloat16)
"""


def main() -> None:
    import tiny_models
    from browser import FLAGS

    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        tiny_models.save("llama", work / "model", num_hidden_layers=12)
        (work / "port.py").write_text(PORT)
        page = work / "report.html"
        subprocess.run([sys.executable, "-m", "parity", "check", work / "model", f"{work / 'port.py'}:build",
                        "--tokens", "0,17,5,40,8,9,31,22,64,3", "--decode-steps", "0", "--html", page],
                       cwd=ROOT / "examples", env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
        shot = work / "report.png"
        subprocess.run(["chromium", *FLAGS, f"--user-data-dir={work / 'profile'}", "--window-size=1100,1500",
                        f"--screenshot={shot}", page.as_uri()], check=True, capture_output=True)
        from PIL import Image

        with Image.open(shot) as image:
            image = image.convert("RGB")
            image = image.resize((image.width * 3 // 4, image.height * 3 // 4), Image.LANCZOS)
            image = image.quantize(colors=128)
            image.save(ROOT / "docs/report.png", optimize=True)
    print(f"wrote {ROOT / 'docs/report.png'} ({(ROOT / 'docs/report.png').stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
