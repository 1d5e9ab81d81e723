"""The surfaces fuzzed beside traces: GGUF headers, server answers (completions and chat), user code (kernels,
factories).

Each surface prepares once in the warm parent (`prepare(scratch)`), makes inputs (`make(rng)`) and runs
one input in a fork (`run_one(data)` -> an outcome of fuzz_harness). Used by scripts/fuzz_surfaces.py
and, a few inputs each, by the suite.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path

import fuzz_harness
import gguf_corpus
import gguf_fuzz
import server_fuzz
import user_code

ROOT = Path(__file__).resolve().parents[1]


class GGUFSurface:
    """A mutated header of the seed GGUF through capture (transformers), capture (llama.cpp) and tokens."""

    name = "gguf"
    timeout_s = 120.0

    def prepare(self, scratch: Path) -> None:
        self.scratch = scratch
        self.base = gguf_corpus.seed()
        self.seed = gguf_corpus.SEED.read_bytes()
        os.environ["PARITY_NO_CACHE"] = "1"
        # imports happen here, once, not in every fork; llama.cpp does not decode here: its OpenMP threads
        # would not survive the fork
        self._commands(self.seed, scratch / "warm-up", commands=(0, 2))

    def _commands(self, data: bytes, directory: Path, commands=(0, 1, 2)) -> dict:
        """{"codes": exit codes, "said": what parity wrote on stderr}, stopping at the first non-zero exit."""
        import contextlib
        import io

        directory.mkdir(exist_ok=True)
        path, out = directory / "model.gguf", directory / "out.safetensors"
        path.write_bytes(data)
        codes, said = [], io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(said):
            every = (["capture", str(path), "--tokens", "1,2,3", "-o", str(out), "--force"],
                     ["capture", f"llamacpp:{path}", "--tokens", "1,2,3", "-o", str(out), "--force"],
                     ["tokens", str(path), f"llamacpp:{path}", "--prompt", "hello world"])
            for argv in (every[index] for index in commands):
                codes.append(fuzz_harness.run_cli(argv))
                if codes[-1] != 0:
                    break
        return {"codes": codes, "said": said.getvalue()}

    def make(self, rng: random.Random) -> bytes:
        return gguf_fuzz.mutate_header(self.seed, rng, self.base)

    def run_one(self, data: bytes) -> tuple[str, str]:
        directory = Path(tempfile.mkdtemp(dir=self.scratch))
        path = directory / "model.gguf"
        path.write_bytes(data)

        def work() -> dict:
            return self._commands(data, directory)

        try:
            result = fuzz_harness.run_forked(work, allowed=(str(directory), *fuzz_harness.interpreter_paths()),
                                             timeout_s=self.timeout_s)
            outcome, detail = _outcome(result)
            if outcome == "pass" and gguf_fuzz.unsound(path):
                outcome, detail = "silent", f"passed an unsound GGUF ({gguf_fuzz.unsound(path)})"
            return outcome, detail
        finally:
            shutil.rmtree(directory, ignore_errors=True)


class ServerSurface:
    """A mutated answer of an honest server through what `parity check MODEL URL` does with it."""

    name = "server"
    timeout_s = 60.0

    def prepare(self, scratch: Path) -> None:
        import tiny_models
        from parity.capture.hf.model import load_model

        model = scratch / "reference"
        tiny_models.save("llama", model)
        tiny_models.save_tokenizer(model)
        self.reference = load_model(model)
        self.reference.vocab_pieces()
        self.seeds = server_fuzz.seeds(self.reference)
        self.allowed = (str(model), *fuzz_harness.interpreter_paths())

    def make(self, rng: random.Random) -> bytes:
        return server_fuzz.mutate(rng.choice(self.seeds), rng)

    def pipeline(self, data: bytes) -> str:
        return server_fuzz.pipeline(data, self.reference)

    def comparable(self, data: bytes) -> bool:
        return server_fuzz.comparable(data, self.reference)

    def run_one(self, data: bytes) -> tuple[str, str]:
        def work() -> dict:
            return {"said": self.pipeline(data)}

        result = fuzz_harness.run_forked(work, allowed=self.allowed, timeout_s=self.timeout_s)
        if "said" not in result:
            return _outcome(result)
        said = result["said"]
        if said.startswith("refused: "):
            message = said.removeprefix("refused: ")
            bad = "\n" in message or "\x1b" in message or "; " not in message
            return ("multi-line", message) if bad else ("refused", "")
        if said == "pass" and not self.comparable(data):
            return "silent", data[:500].decode("utf-8", "replace")
        return said, ""


class ChatSurface(ServerSurface):
    """A mutated answer of an honest chat server through what `parity check MODEL URL/v1/chat/completions` does."""

    name = "chat"

    def prepare(self, scratch: Path) -> None:
        super().prepare(scratch)
        server_fuzz.with_chat_template(self.reference)
        self.seeds = server_fuzz.chat_seeds(self.reference)

    def pipeline(self, data: bytes) -> str:
        return server_fuzz.chat_pipeline(data, self.reference)

    def comparable(self, data: bytes) -> bool:
        return server_fuzz.chat_comparable(data, self.reference)


class UserCodeSurface:
    """A random kernel through `parity kernel`, or a factory through `parity sanity`, against what it must give."""

    name = "user-code"
    timeout_s = 180.0
    FACTORY_SHARE = 0.15

    def prepare(self, scratch: Path) -> None:
        self.scratch = scratch
        self.count = 0

    def make(self, rng: random.Random):
        self.count += 1
        if rng.random() < self.FACTORY_SHARE:
            name = rng.choice(sorted(user_code.FACTORY_BEHAVIOURS) + ["random"] * 6)
            return ("factory", *((name, *user_code.FACTORY_BEHAVIOURS[name]) if name != "random" else
                                 user_code.random_factory(rng)))
        return ("kernel", *user_code.random_kernel(rng))

    def run_one(self, item) -> tuple[str, str]:
        kind, name, body, expected = item
        directory = Path(tempfile.mkdtemp(dir=self.scratch))
        module = directory / "under_test.py"
        header = user_code.FACTORY_HEADER.format(examples=str(ROOT / "examples")) if kind == "factory" \
            else user_code.HEADER
        module.write_text(header + f"\ndef f{'()' if kind == 'factory' else '(x, dim)'}:\n    {body}\n")
        argv = (["sanity", f"{module}:f", "--seq-length", "8", "--timeout", "20"] if kind == "factory" else
                ["kernel", "softmax", f"{module}:f", "--lengths", "1,13", "--dtypes", "float32,float16",
                 "--timeout", "5", "--json", "-"])

        def work() -> dict:
            return {"codes": [fuzz_harness.run_cli(argv)]}

        try:
            allowed = (str(directory), str(ROOT / "examples"), *fuzz_harness.interpreter_paths())
            result = fuzz_harness.run_forked(work, allowed=allowed, timeout_s=self.timeout_s)
            outcome, detail = _outcome(result)
            if kind == "kernel" and outcome in ("pass", "fail"):
                import json

                try:
                    json.loads(result["stdout"])
                except ValueError:
                    return "tracebacks", f"--json - is not JSON alone: {result['stdout'][:300]!r}"
            wanted = {"pass": "pass", "fail": "fail", "refuse": "refused"}[expected]
            if outcome == "pass" and wanted != "pass":
                return "silent", f"{kind} {name}: {body[:300]}"
            if outcome in ("pass", "fail", "refused") and outcome != wanted:
                return f"unexpected {outcome} (wanted {wanted})", f"{kind} {name}"
            return outcome, detail
        finally:
            shutil.rmtree(directory, ignore_errors=True)


def _outcome(result: dict) -> tuple[str, str]:
    """The harness's outcome of a fork that ran CLI commands."""
    if result.get("outcome"):
        return result["outcome"], str(result.get("status", "")) + " " + result.get("stderr", "")[-500:]
    if result.get("exception"):
        return "tracebacks", result["exception"]
    if result.get("outside"):
        return "outside", ", ".join(result["outside"])
    stderr = result.get("said", "") + result["stderr"]   # what went through sys.stderr, then what C code wrote
    outcome = fuzz_harness.cli_outcome(result["codes"], result.get("said") or result["stderr"])
    if outcome in ("pass", "fail", "refused") and "Traceback" in stderr:
        outcome = "tracebacks"
    return outcome, stderr[-800:] if outcome in fuzz_harness.BAD else ""


SURFACES = {surface.name: surface for surface in (GGUFSurface, ServerSurface, ChatSurface, UserCodeSurface)}
