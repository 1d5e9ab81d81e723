"""parity generate: greedy decoding, teacher-forced agreement and the sampler, reference against candidate.

A candidate is `llamacpp:FILE.gguf`, a model directory or .gguf (in transformers),
or `FILE.py:FACTORY` / `module:FACTORY` returning a torch.nn.Module that maps
(1, T) ids to logits. Each side only has to give logits for a sequence of ids.
"""

from __future__ import annotations

from dataclasses import dataclass

from parity.capture.candidate import CandidateContext, open_candidate
from parity.core.errors import OptionError
from parity.core.generation import check_sampler, first_divergence, greedy, teacher_forced
from parity.core.results import GenerationComparison


@dataclass(frozen=True)
class GenerateOptions:
    model: str
    candidate: str
    prompt: str | None = None
    tokens: list[int] | None = None
    count: int = 32
    dtype: str = "float32"
    sampler: str | None = None          # module:function(logits, temperature, top_k, top_p) -> probabilities
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None

    def __repr__(self) -> str:
        return f"<GenerateOptions {self.model} vs {self.candidate}, {self.count} tokens>"


def run_generate(options: GenerateOptions, progress) -> GenerationComparison:
    from parity.capture.hf.model import load_model, quiet_transformers

    if (options.prompt is None) == (options.tokens is None):
        raise OptionError("give exactly one of --prompt TEXT or --tokens 1,2,3")
    if options.count < 1:
        raise OptionError("-n must be at least 1")
    quiet_transformers()
    progress.step(f"loading {options.model} ({options.dtype})")
    reference = load_model(options.model, dtype=options.dtype)
    prompt = options.tokens if options.tokens is not None else reference.tokenize(options.prompt)
    reference.check_length(len(prompt) + options.count, what=f"the prompt with -n {options.count}")
    context = CandidateContext(model_path=options.model, dtype=options.dtype, progress=progress)
    with open_candidate(options.candidate, context, needs=("logits",)) as candidate:
        candidate_logits = candidate.logits
        progress.step(f"greedy decoding {options.count} tokens with the reference")
        reference_tokens, reference_rows = greedy(reference.logits, prompt, options.count)
        progress.step(f"greedy decoding {options.count} tokens with the candidate")
        candidate_tokens, _ = greedy(candidate_logits, prompt, options.count)
        progress.step("scoring the reference's continuation on both sides")
        sequence = list(prompt) + reference_tokens
        reference_logits = reference.logits(sequence)
        forced = teacher_forced(reference_logits, candidate_logits(sequence), len(prompt))
    sampler = None
    if options.sampler:
        progress.step(f"checking the sampler {options.sampler}")
        sampler = check_sampler(_function(options.sampler), reference_logits[len(prompt) - 1:-1],
                                options.temperature, options.top_k, options.top_p)
    return GenerationComparison(tuple(prompt), tuple(reference_tokens), tuple(candidate_tokens),
                                first_divergence(reference_tokens, candidate_tokens, reference_rows), forced, sampler,
                                reference.vocab_pieces())


def _function(spec: str):
    from parity.capture.torch.factory import load_factory

    return load_factory(spec, what="a sampler function (logits, temperature, top_k, top_p) -> probabilities")
