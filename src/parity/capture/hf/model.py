"""The reference: a HuggingFace transformers model, traced through its own modules.

MODEL is a local model directory (config.json plus weights) or a `.gguf` file,
which transformers dequantizes on load. Attention runs through transformers'
eager implementation, so that the probabilities exist to be recorded, and MoE
experts through the eager per-expert loop (the grouped kernel refuses float64). Where
each checkpoint lives is found from the model's structure (hf_structure.py),
before the weights are read; every module with no checkpoint of its own is
recorded too, as `raw.<module path>`, unless `raw=False`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parity.capture.gguf import cache as gguf_cache
from parity.capture.hf.structure import ModelMap, map_config, map_model
from parity.capture.hf.placement import Placement, scratch_offload
from parity.capture.torch.module import ids_tensor, trace_module
from parity.core.errors import CaptureError, OptionError, require
from parity.core.sequence import ReferenceTokens
from parity.core.trace import Trace

DTYPES = ("float64", "float32", "bfloat16", "float16")


@dataclass
class HFModel:
    """A loaded transformers causal LM, its tokenizer (loaded on first use) and where its checkpoints live."""

    path: Path
    model: Any
    family: str          # config.model_type
    dtype: str
    mapping: ModelMap | None = None
    _tokenizer: Any = None
    _vocab_pieces: tuple[str, ...] | None = None
    _parked: Any = None   # capture/hf/parking.py: the weights in a file, mapped back
    taken: dict = field(default_factory=dict)   # weights taken from a candidate (take_weights), name -> array

    def take_weights(self, weights: dict) -> None:
        """Compute with `weights` (`layers.0.q.weight` -> an array as nn.Linear stores it) in place of the model's
        own; a copy of this model loaded again (a calibration at another precision) takes them too."""
        import torch

        from parity.capture.torch.taps import parameter_owners
        from parity.capture.torch.tracer import IN_OUT_STORAGE
        from parity.core.names import weight_of

        owners = parameter_owners(self.model, self.mapping.taps)
        with torch.no_grad():
            for name, array in weights.items():
                parameter = weight_of(name)[1]
                module = owners[name]
                value = torch.as_tensor(array)
                if parameter == "weight" and type(module).__name__ in IN_OUT_STORAGE and value.ndim == 2:
                    value = value.t()
                target = getattr(module, parameter)
                # a parameter of its own: one tied to another module's (lm_head to the token table) is untied, as
                # a build that quantized one of them untied it
                setattr(module, parameter, torch.nn.Parameter(value.to(dtype=target.dtype, device=target.device),
                                                              requires_grad=False))
        self.taken = {**self.taken, **weights}

    def park(self, path: str | Path) -> None:
        """Move the weights to the file `path`, mapped back in place of their memory (a long check's reference
        between its passes); `rest()` then hands back the pages a pass read."""
        from parity.capture.hf.parking import ParkedWeights

        if self._parked is None:
            self._parked = ParkedWeights(self.model, path)
        self.rest()

    def rest(self) -> None:
        """Between passes: hand back the pages of the parked weights that passes read since, and the free pages
        the passes left in the C allocator's heaps (core/allocator.py)."""
        from parity.core.allocator import hand_back_free_pages

        if self._parked is not None:
            self._parked.rest()
        hand_back_free_pages()

    def __repr__(self) -> str:
        return f"<HFModel {self.family} {self.dtype} from {self.path}>"

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.path)
        return self._tokenizer

    def tokenize(self, prompt: str) -> list[int]:
        """Token ids of `prompt` as the model's tokenizer makes them (BOS included if it adds one)."""
        return list(self.tokenizer(prompt)["input_ids"])

    def vocab_pieces(self) -> tuple[str, ...]:
        """The text every token id adds to a text, as a server's token text shows it: decoded after a word, so
        that the space a SentencePiece or word-level decoder drops at the start is kept; () without a usable
        tokenizer (reports then show ids)."""
        if self._vocab_pieces is None:
            try:
                tokenizer = self.tokenizer
            except CaptureError:
                return ()
            ids = range(self.model.config.vocab_size)
            anchor = list(tokenizer("a", add_special_tokens=False)["input_ids"])
            alone = tokenizer.batch_decode([[i] for i in ids])
            if not anchor:
                self._vocab_pieces = tuple(alone)
                return self._vocab_pieces
            prefix = tokenizer.decode(anchor)
            after = tokenizer.batch_decode([anchor + [i] for i in ids])
            self._vocab_pieces = tuple(text[len(prefix):] if text.startswith(prefix) else piece
                                       for text, piece in zip(after, alone))
        return self._vocab_pieces

    def reference_tokens(self, text: str, follows: str = "", templated: bool = True) -> ReferenceTokens:
        """Tokenize `text`, run it, and return each token's text, offset and the next-token log-probabilities.
        After `follows` (a prompt rendered by the chat template, special tokens written out; or, not `templated`,
        a prompt as sent, given the tokenizer's own special tokens), the prompt's tokens are run first and hold no
        text: offsets count from the start of `text`."""
        import torch

        ids, start = self._ids_after(follows, text, templated) if follows else (self.tokenize(text), 0)
        self.check_length(len(ids), what="the candidate's text")   # a server's answer, before any forward pass
        decode = functools.partial(self.tokenizer.decode, skip_special_tokens=not follows)
        prefixes = [decode(ids[:n]) for n in range(start, len(ids) + 1)]   # text of each prefix from `text`'s start
        offsets = (0,) * start + tuple(len(prefix) - len(prefixes[0]) for prefix in prefixes[:-1])
        pieces = ("",) * start + tuple(prefixes[n + 1][len(prefixes[n]):] for n in range(len(prefixes) - 1))
        with torch.no_grad():
            logits = self.model(ids_tensor([ids], self.model)).logits[0].double().cpu()          # (T, V)
        logprobs = torch.log_softmax(logits, dim=-1).numpy()
        return ReferenceTokens(pieces, offsets, logprobs, self.vocab_pieces())

    def scoring(self, candidate) -> ReferenceTokens:
        """reference_tokens over a black-box candidate's text (CandidateTokens), after the prompt it follows where
        it echoed none."""
        return self.reference_tokens(candidate.text, candidate.follows, candidate.follows_template)

    def _ids_after(self, follows: str, text: str, templated: bool) -> tuple[list[int], int]:
        """The ids of `follows` + `text` (a template writes its own BOS; a prompt as sent gets the tokenizer's) and
        how many are the prompt's."""
        def encode(part: str, special: bool) -> list[int]:
            return list(self.tokenizer(part, add_special_tokens=special)["input_ids"])

        prompt, whole = encode(follows, not templated), encode(follows + text, not templated)
        if whole[:len(prompt)] == prompt:
            return whole, len(prompt)
        return prompt + encode(text, False), len(prompt)     # a token merged across the boundary: the answer's own

    def chat_prompt(self, prompt: str, system: str | None = None) -> str:
        """`prompt` as one user message (after `system` as a system message, where given), rendered by the
        tokenizer's chat template up to the assistant's answer."""
        from parity.core.chat import chat_messages

        if not getattr(self.tokenizer, "chat_template", None):
            raise OptionError(f"{self.path}'s tokenizer has no chat template, so a chat endpoint's answer has no "
                              "prompt to be scored after; give a model whose tokenizer_config.json holds the "
                              "server's template, or the server's /v1/completions address")
        try:
            return self.tokenizer.apply_chat_template(chat_messages(prompt, system), tokenize=False,
                                                      add_generation_prompt=True)
        except Exception as error:  # noqa: BLE001 - a template is code: jinja2's errors, raise_exception(...)
            what = "one user message" if system is None else "a system message and a user message"
            raise OptionError(f"{self.path}'s chat template does not render {what} ({error}); a chat endpoint is "
                              "checked with a template that does") from None

    def position_limit(self) -> tuple[str, int] | None:
        """(config field, value) of the most positions the model takes, when its config says."""
        fields = self.model.config.to_dict()  # as config.json spells them (GPT-2: n_positions)
        for name in ("n_positions", "max_position_embeddings"):
            value = fields.get(name)
            if isinstance(value, int) and value > 0:
                return name, value
        return None

    def check_length(self, count: int, *, what: str = "the prompt") -> None:
        """Refuse `count` positions beyond the model's limit, before any forward pass."""
        limit = self.position_limit()
        if limit is not None and count > limit[1]:
            raise OptionError(f"{what} is {count} tokens, more than {self.path} takes ({limit[0]} = {limit[1]}); "
                              "give a shorter --prompt or --tokens")

    def logits(self, tokens: list[int], first: int = 0):
        """Logits at positions first.. of one forward pass over `tokens`: (T - first, V), float64 numpy; at a long
        input its attention runs in blocks of query rows and only those positions go through the output head."""
        from parity.capture.torch.incremental import full_logits

        return full_logits(self.model, tokens, first)

    def greedy(self, prompt: list[int], count: int) -> tuple[list[int], list]:
        """The greedy continuation of `prompt` ((tokens, each step's log-probs)), decoded through the model's
        KV cache at the model's precision: N tokens cost N one-token passes. A model that cannot decode through
        a cache runs a full pass per token."""
        from parity.capture.torch.incremental import cached_stepper, decode_support
        from parity.core.generation import greedy, greedy_stepped

        if count > 1 and decode_support(self.model, prompt) is None:
            return greedy_stepped(cached_stepper(self.model), prompt, count)
        return greedy(self.logits, prompt, count)

    def capture(self, tokens: list[int], *, checkpoints: str | None = None, prompt: str | None = None,
                weights: bool = False, raw: bool = True, start_position: int = 0, **tracing) -> Trace:
        """The trace of one forward pass over `tokens`, the first at absolute position `start_position`.
        `tracing`: the attention probabilities' `recipes` kept, or a `stream` they go to (capture/torch/tracer.py)."""
        self._check_tokens(tokens)
        with self._float64_hint():
            return trace_module(self.model, tokens, taps=self.mapping.taps, checkpoints=checkpoints,
                                metadata=self.trace_metadata(prompt, start_position), weights=weights, raw=raw,
                                forward=self._positioned(start_position), **tracing)

    @contextlib.contextmanager
    def _float64_hint(self):
        """A forward that fails in float64 (XGLM's masks overflow a float there) says how to run it at all."""
        try:
            yield
        except CaptureError as error:
            if self.dtype != "float64" or "forward pass" not in str(error):
                raise
            raise CaptureError(f"{error}; transformers' {type(self.model).__name__} may not run in float64: "
                               "pass --dtype float32 (tolerances then come from the dtype tables, not a "
                               "calibration)") from error

    def _positioned(self, start_position: int):
        """The forward at absolute positions start_position.. (None: from 0, as transformers runs it)."""
        if not start_position:
            return None
        from parity.capture.torch.incremental import positioned_forward

        return positioned_forward(self.model, start_position, who=f"the model {self.path}")

    def capture_to_file(self, tokens: list[int], path: str | Path, *, overwrite: bool = False,
                        checkpoints: str | None = None, prompt: str | None = None, weights: bool = False,
                        raw: bool = True, metadata: dict | None = None, start_position: int = 0,
                        **tracing) -> list[str]:
        """`capture`, written to the trace file `path` as the checkpoints arrive (the trace is never held
        whole in memory); returns the names written."""
        from parity.capture.torch.streaming import stream_module
        from parity.core.trace.writer import trace_file

        from parity.capture.hf.head import HeadMismatch, blocked_head
        from parity.capture.torch.taps import resolve_taps

        self._check_tokens(tokens)
        metadata = {**self.trace_metadata(prompt, start_position), **(metadata or {})}
        modules = sum(1 for _ in self.model.modules())
        options = dict(overwrite=overwrite, expected_tensors=2 * modules, metadata_bytes=len(json.dumps(metadata)))
        head = blocked_head(self.model, resolve_taps(self.mapping.taps), len(tokens), checkpoints)
        if head is not None:   # long inputs: the logits a block of rows at a time, after the forward
            try:
                with trace_file(path, **options) as writer:
                    return stream_module(self.model, tokens, writer, taps=self.mapping.taps,
                                         checkpoints=head.excluded(checkpoints), metadata=metadata, weights=weights,
                                         raw=raw, forward=head.forward(self._positioned(start_position)),
                                         after=head.write, **tracing)
            except HeadMismatch:
                pass           # a model whose head is not what it seems: run it whole
        with trace_file(path, **options) as writer:
            return stream_module(self.model, tokens, writer, taps=self.mapping.taps, checkpoints=checkpoints,
                                 metadata=metadata, weights=weights, raw=raw,
                                 forward=self._positioned(start_position), **tracing)

    def _check_tokens(self, tokens: list[int]) -> None:
        if not tokens:
            raise OptionError("no tokens to run: give a non-empty --prompt or --tokens")
        vocab = self.model.config.vocab_size
        outside = next((token for token in tokens if not 0 <= token < vocab), None)
        if outside is not None:
            raise OptionError(f"token id {outside} is outside the vocabulary of {self.path} (ids 0 to {vocab - 1}); "
                              "give ids within it")
        self.check_length(len(tokens))

    def trace_metadata(self, prompt: str | None, start_position: int = 0) -> dict:
        import transformers

        return {**({"start_position": start_position} if start_position else {}),
            "arch": self.model.config.model_type,
            "producer": f"transformers {transformers.__version__}",
            "dtype": self.dtype,
            "model_path": str(self.path) if self.path is not None else None,   # what a calibration reloads
            "prompt": prompt,
            "config": json.loads(self.model.config.to_json_string(use_diff=False)),
            "architecture": self.mapping.architecture,
        }


def is_model_path(spec: Any) -> bool:
    """A .gguf file or a directory with config.json: what transformers loads. Anything there named .gguf is
    claimed, so that the GGUF reader says what is wrong with one that is no regular file."""
    if not isinstance(spec, (str, Path)):
        return False
    path = Path(spec)
    return (path.suffix == ".gguf" and (path.exists() or path.is_symlink())) or (path.is_dir() and (path / "config.json").is_file())


def _from_pretrained_args(path: Path) -> tuple[str, dict]:
    if path.suffix == ".gguf":
        require("gguf", extra="hf", purpose="loading a .gguf file in transformers")
        from parity.capture.gguf.limits import check_gguf_loadable

        check_gguf_loadable(path)
        return str(path.parent), {"gguf_file": path.name}
    if not (path / "config.json").exists():
        raise CaptureError(
            f"{path}: not a model directory (no config.json) nor a .gguf file; "
            "give a local HuggingFace model directory or a .gguf file"
        )
    return str(path), {}


def load_model(path: str | Path, *, dtype: str = "float32", placement: Placement | None = None) -> HFModel:
    """Load a local model directory or .gguf file as a causal LM in `dtype`, eager attention;
    `placement` spreads it over devices and the disk (accelerate's big-model inference)."""
    torch = require("torch", extra="hf", purpose="capturing a reference")
    transformers = require("transformers", extra="hf", purpose="capturing a reference")
    if dtype not in DTYPES:
        raise OptionError(f"--dtype {dtype} is not supported; choose one of {', '.join(DTYPES)}")
    path = Path(path)
    if not path.exists():
        raise CaptureError(f"{path}: no such model directory or .gguf file")
    location, extra = _from_pretrained_args(path)   # a .gguf is read and checked here, cached or not
    if placement is not None:
        placement = scratch_offload(placement, dtype)
    cached = gguf_cache.cached_directory(path) if path.suffix == ".gguf" else None
    if cached is not None:
        try:
            model = _from_pretrained(transformers, torch, path, str(cached), {}, dtype, placement)
        except CaptureError as error:   # the copy, not the GGUF, is at fault: read the GGUF again
            gguf_cache.discard(cached, f"transformers could not load it: {error}")
            cached = None
    if cached is None:
        model = _from_pretrained(transformers, torch, path, location, extra, dtype, placement)
    if path.suffix == ".gguf" and not cached and dtype in ("float32", "float64") and not placement:
        # both hold every dequantized value exactly; the copy is stored in float32
        gguf_cache.store(path, model, lambda: load_tokenizer(path))
    model.eval()
    return HFModel(path=path, model=model, family=model.config.model_type, dtype=dtype,
                   mapping=map_model(model, where=str(path)))


def _from_pretrained(transformers, torch, path: Path, location: str, extra: dict, dtype: str,
                     placement: Placement | None):
    config = _load_config(transformers, path, location, extra)
    map_config(config, where=str(path))  # refuse a model that cannot be mapped before reading its weights
    placed = placement.from_pretrained_kwargs() if placement else {}
    load_dtype, skeleton = dtype, None
    if placement is not None and placement.offloads and not extra and placed["device_map"] in ("auto", "sequential"):
        load_dtype, skeleton = _narrow_load(transformers, torch, config, location, dtype, placed)
    try:
        model, loading = transformers.AutoModelForCausalLM.from_pretrained(
            location, config=config, dtype=getattr(torch, load_dtype), attn_implementation="eager",
            local_files_only=True, output_loading_info=True, **extra, **placed,
            experts_implementation="eager",   # MoE: the per-expert loop, float64 too
        )
    except Exception as error:   # transformers and safetensors raise many kinds; each is the model files' fault
        raise CaptureError(f"{_weights_file(path)}: transformers could not load the weights: {_first_line(error)}; "
                           "the file may be truncated or damaged: copy or save it again") from error
    missing = sorted(loading.get("missing_keys") or ())
    if path.suffix == ".gguf" and missing:   # transformers initialises them at random: never a reference
        raise CaptureError(f"{path}: holds no weights for {missing[0]}" + (f" and {len(missing) - 1} more" if
                           len(missing) > 1 else "") + ", which transformers would initialise at random; "
                           "convert the model again")
    if skeleton is not None:
        from parity.capture.hf.widening import widen

        widen(model, skeleton, torch, dtype)
    return model


def _narrow_load(transformers, torch, config, location: str, dtype: str, placed: dict):
    """(dtype to load at, the model built wide) for an offloaded model stored narrower than `dtype`: loaded at the
    files' precision and widened (capture/hf/widening.py), its device map planned for the wide sizes and set in
    `placed`; (dtype, None) when nothing goes to the disk or the files are not narrower."""
    from parity.capture.hf.widening import narrower, stored_float_dtype, wide_device_map

    stored = stored_float_dtype(Path(location))
    if not narrower(stored, dtype):
        return dtype, None
    skeleton, device_map = wide_device_map(transformers, torch, config, dtype, placed.get("max_memory"))
    if "disk" not in device_map.values():
        return dtype, None
    placed["device_map"] = device_map
    return stored, skeleton


def _load_config(transformers, path: Path, location: str, extra: dict):
    """The model's configuration, with any fault in it named as config.json's (or the .gguf's)."""
    config_file = path if path.suffix == ".gguf" else path / "config.json"
    if path.suffix != ".gguf":
        from parity.core.text_input import read_text

        try:
            document = json.loads(read_text(config_file, what="the model's config.json"))
        except (OptionError, ValueError, RecursionError) as error:
            reason = str(error) if isinstance(error, OptionError) else f"{config_file} is not valid JSON"
            raise CaptureError(f"{reason}; fix it or save the model again") from None
        if not isinstance(document, dict):
            raise CaptureError(f"{config_file} holds a JSON {type(document).__name__}, not an object; "
                               "fix it or save the model again")
    try:
        return transformers.AutoConfig.from_pretrained(location, local_files_only=True, **extra)
    except Exception as error:   # a wrong-typed field raises TypeError, ValueError or a validation error
        raise CaptureError(f"{config_file}: transformers could not read the model's configuration: "
                           f"{_first_line(error)}; fix the file or save the model again") from error


def _weights_file(path: Path) -> Path | str:
    """The weights file to name in an error: the .gguf, the one .safetensors file, or the directory's weights."""
    if path.suffix == ".gguf" or not path.is_dir():
        return path
    files = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
    return files[0] if len(files) == 1 else f"{path} (its weights files)"


def load_tokenizer(path: str | Path):
    """The tokenizer of a model directory or .gguf file; loaded once per process while the files are unchanged
    (a check asks for it from several places; building it from a GGUF takes seconds)."""
    path = Path(path)
    if not path.exists():
        raise CaptureError(f"{path}: no such model directory or .gguf file")
    if path.suffix == ".gguf":
        from parity.capture.gguf.header import read_header

        read_header(path)   # a regular file with a sound header, before transformers opens it
    cached = gguf_cache.cached_directory(path) if path.suffix == ".gguf" else None
    source = cached if cached is not None and (cached / "tokenizer_config.json").is_file() else None
    return _tokenizer(path, source, _identity(path))


def _identity(path: Path) -> tuple:
    """What changes when the tokenizer's files do: the file's, or each file's in the directory, time and size."""
    files = [path] if path.is_file() else sorted(entry for entry in path.iterdir() if entry.is_file())
    return tuple((entry.name, entry.stat().st_mtime_ns, entry.stat().st_size) for entry in files)


@functools.lru_cache(maxsize=8)
def _tokenizer(path: Path, cached: Path | None, _identity: tuple):
    transformers = require("transformers", extra="hf", purpose="tokenizing a prompt")
    location, extra = (str(path.parent), {"gguf_file": path.name}) if path.suffix == ".gguf" else (str(path), {})
    if cached is not None:
        location, extra = str(cached), {}
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(location, local_files_only=True, **extra)
    except Exception as error:   # a missing package (sentencepiece, sacremoses) is an ImportError; files, others
        raise CaptureError(
            f"{path}: no usable tokenizer ({_first_line(error)}); pass token ids with --tokens 1,2,3 instead, "
            "or add the model's tokenizer files"
        ) from error
    if len(tokenizer.get_vocab()) <= len(set(tokenizer.all_special_ids)):  # transformers built one from nothing
        raise CaptureError(f"{path}: its tokenizer is empty (no tokenizer files with a vocabulary), so a prompt "
                           "cannot be tokenized; pass token ids with --tokens 1,2,3 instead, or add the model's "
                           "tokenizer files (tokenizer.json)")
    return tokenizer


def capture_hf(
    path: str | Path,
    *,
    prompt: str | None = None,
    tokens: list[int] | None = None,
    dtype: str = "float32",
    checkpoints: str | None = None,
) -> Trace:
    """Trace one forward pass of a transformers model over `tokens`, or over `prompt` tokenized."""
    if (prompt is None) == (tokens is None):
        raise OptionError("give exactly one of a prompt or token ids")
    model = load_model(path, dtype=dtype)
    ids = tokens if tokens is not None else model.tokenize(prompt)
    return model.capture(ids, checkpoints=checkpoints, prompt=prompt)


def quiet_transformers() -> None:
    """Silence transformers' load progress bars and advisory warnings (for the CLI, whose
    own progress display says what is happening)."""
    os.environ.setdefault("TQDM_DISABLE", "1")  # the GGUF loader uses tqdm directly; read when tqdm is imported
    transformers = require("transformers", extra="hf", purpose="capturing a reference")
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def _first_line(error: BaseException) -> str:
    """The error's message on one line (a validation error's detail is on its second line)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
    return " ".join(lines[:2])[:300]
