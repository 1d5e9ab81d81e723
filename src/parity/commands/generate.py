"""parity generate: greedy decoding, teacher-forced agreement and the sampler, reference against candidate.

A candidate is `llamacpp:FILE.gguf`, a model directory or .gguf (in transformers),
or `FILE.py:FACTORY` / `module:FACTORY` returning a torch.nn.Module that maps
(1, T) ids to logits. Each side only has to give logits for a sequence of ids.
"""

from __future__ import annotations

from dataclasses import dataclass

from parity.capture.candidate import CandidateContext, open_candidate
from parity.commands import options
from parity.commands.defaults import default_pair
from parity.commands.output import finish, progress
from parity.commands.failures import candidate_running
from parity.core.errors import OptionError
from parity.core.generation import check_sampler, divergence_held_to, first_divergence, held_to_noise, teacher_forced
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


def add_arguments(parser) -> None:
    parser.add_argument("model", metavar="MODEL", nargs="?", help="reference model directory or .gguf file")
    parser.add_argument("candidate", metavar="CANDIDATE", nargs="?",
                        help="llamacpp:FILE.gguf, a model directory or .gguf, or FILE.py:FACTORY")
    options.add_input(parser, dtype_help="both sides' precision where it is chosen (default float32)")
    parser.add_argument("-n", "--max-tokens", type=options.positive_int, default=32,
                        help="tokens to generate (default 32)")
    parser.add_argument("--sampler", type=options.function_spec,
                        help="FILE.py:FUNCTION(logits, temperature, top_k, top_p) -> probabilities")
    parser.add_argument("--temperature", type=options.positive, default=1.0, help="for the sampler check")
    parser.add_argument("--top-k", type=options.positive_int, help="for the sampler check")
    parser.add_argument("--top-p", type=options.probability, help="for the sampler check")
    options.add_reports(parser)


def run(args) -> int:
    """Greedy-decode with the reference and a candidate, and compare what they generate.

    Reports the first step where the two pick different tokens, with the
    reference's top-5 and the margin between its top two there, so that a near
    tie (a flip noise can cause) is told apart from a real divergence. Then
    scores the reference's continuation on both sides (teacher-forced): per
    position KL divergence and top-1 / top-5 agreement. Where the candidate's
    precision is known, the reference is run in float64 and at that precision,
    and each position's KL is held to 9x the largest KL that precision makes
    there (plus a floor of 1e-9 nats): a bug that moves the distribution more
    than rounding does fails even where greedy decoding agrees. With --sampler
    FILE.py:FUNCTION(logits, temperature, top_k, top_p) -> probabilities, also
    compares the candidate's sampler with the reference sampler on the same logits.
    CANDIDATE is llamacpp:FILE.gguf, a model directory or .gguf, or FILE.py:FACTORY.
    With no arguments: SmolLM2 in transformers against llama.cpp, 32 tokens.
    """
    default_pair(args)
    generate = GenerateOptions(model=args.model, candidate=args.candidate, prompt=args.prompt,
                               tokens=options.token_ids(args.tokens), count=args.max_tokens,
                               dtype=args.dtype or "float32", sampler=args.sampler, temperature=args.temperature,
                               top_k=args.top_k, top_p=args.top_p)
    with progress() as steps:
        comparison = run_generate(generate, steps)
    return finish(comparison, args)


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
    with open_candidate(options.candidate, context, needs=("logits",)) as opened:
        from parity.commands.vocabulary import seen_through

        candidate, narrower = seen_through(opened, opened.logits(prompt[:1]).shape[-1],
                                           reference.logits(prompt[:1]).shape[-1])   # a padded vocabulary cut
        if narrower is not None:
            raise OptionError(f"parity generate compares logits, and {narrower}")
        candidate_logits = candidate.logits
        progress.step(f"greedy decoding {options.count} tokens with the reference")
        reference_tokens, reference_rows = reference.greedy(prompt, options.count)
        progress.step(f"greedy decoding {options.count} tokens with the candidate")
        sequence = list(prompt) + reference_tokens
        with candidate_running(f"greedy decoding (inputs of up to {len(sequence)} tokens: the prompt's {len(prompt)} "
                               f"and {options.count} decoded)"):
            candidate_tokens, _ = candidate.greedy(prompt, options.count)
            progress.step("scoring the reference's continuation on both sides")
            scored = candidate_logits(sequence)
        reference_logits = reference.logits(sequence)
        forced = calibrated(reference, candidate.numerics, sequence, len(prompt), scored, progress) \
            or teacher_forced(reference_logits, scored, len(prompt))
        numerics = candidate.numerics
    sampler = None
    if options.sampler:
        progress.step(f"checking the sampler {options.sampler}")
        sampler = check_sampler(_function(options.sampler), reference_logits[len(prompt) - 1:-1],
                                options.temperature, options.top_k, options.top_p)
    divergence = first_divergence(reference_tokens, candidate_tokens, reference_rows)
    if numerics is not None:
        divergence = divergence_held_to(divergence, forced, numerics.label or numerics.dtype)
    return GenerationComparison(tuple(prompt), tuple(reference_tokens), tuple(candidate_tokens), divergence, forced,
                                sampler, reference.vocab_pieces())


def calibrated(reference, numerics, sequence: list[int], start: int, candidate_logits, progress):
    """Teacher-forced scores against the reference in float64, each position's KL held to kl_bound of the KL
    the candidate's precision makes (the reference run at it); None when that precision is not known."""
    from parity.capture.hf.model import load_model

    if numerics is None:
        return None
    progress.step("the reference in float64 and at the candidate's precision, for the KL bound")
    truth = load_model(reference.path, dtype="float64")
    truth_logits = truth.logits(sequence)
    del truth
    with numerics.reference(reference) as lowp:
        lowp_logits = lowp.logits(sequence)
    return held_to_noise(teacher_forced(truth_logits, candidate_logits, start), truth_logits, lowp_logits, start,
                         numerics.label or numerics.dtype)


def _function(spec: str):
    from parity.capture.torch.factory import load_factory

    return load_factory(spec, what="a sampler function (logits, temperature, top_k, top_p) -> probabilities")
