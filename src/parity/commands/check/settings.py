"""A failure no detector explains, held against the reference run with a config setting read otherwise.

Converters and ports read a model's config, and a field they do not read leaves what they assume in its
place: RoPE's base at 10000, a norm's epsilon at 1e-6, no sliding window, no soft-cap. The detectors fit
such parameters from the layers' tensors; a candidate seen at its logits alone (a function of token ids,
a compiled blob, CTranslate2) gives them nothing to fit, and a setting whose mark is spread over many ops
(a soft-cap and a window together) fits none of them. So a check whose first divergence is left as
`no_known_cause` runs the reference again under each setting of core/config_settings.py, over the same
tokens, its weights shared (capture/hf/settings.py), recording the logits and that checkpoint alone, and
holds the candidate to each run with the very tolerance it was compared with. A reading counts only where
the reference run so fails against the reference's own run (the setting makes a difference the check can
see). Settings are added one at a time while each brings the candidate closer, at most three together;
each is tried beside the best so far, since one misreading's error can hide another's. A reading the
candidate passes against, and that takes at least half of its error away, is the diagnosis, `confirmed`;
one that leaves at most a tenth of the error is `likely`; otherwise the `no_known_cause` says which
settings were ruled out.

Each setting tried is one forward pass of the reference over the check's tokens (N settings: about 2N
passes with the combinations): a check of at most MAX_TOKENS tokens, whose reference is held in memory
(not spread over devices or the disk).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from parity.core.config_settings import GENERIC, Setting, changes_of, settings_to_try
from parity.core.results import Comparison, Diagnosis
from parity.core.results.comparison import PASS

UNEXPLAINED = "no_known_cause"
MAX_TOKENS = 1024
MAX_TOGETHER = 3
LIKELY_LEFT = 0.1        # a reading that leaves at most this share of the error is likely
CONFIRMED_LEFT = 0.5     # one the candidate passes against must leave at most this share (not a marginal failure
                         # brought within its bound by a nudge)
CLOSER = 0.99            # a setting added must leave less than this share of the error before it
SHOWN_LEFT = 0.5         # a reading that explains none of it is named as the closest when it leaves at most this


@dataclass(frozen=True)
class Reading:
    """The candidate held to the reference run under `settings`."""

    settings: tuple[Setting, ...]
    passed: bool          # every compared checkpoint within its tolerance
    visible: bool         # the reference run so fails against the reference's own run: the setting shows
    left: float           # the largest share of a checkpoint's error (rel_l2) left, against the reference's own
    error: float          # what is left: rel_l2 at the logits (or the one checkpoint compared); a server's mean KL

    def __repr__(self) -> str:
        fields = " + ".join(setting.field for setting in self.settings)
        return f"<Reading {fields} {'passes' if self.passed else f'leaves {self.left:.2g}'}>"


def with_settings_tried(comparison: Comparison, reference_model, reference_trace, candidate_trace, config,
                        options, progress) -> Comparison:
    """The comparison with its unexplained first divergence explained by a config setting read otherwise, where
    the reference run so agrees with the candidate; the settings ruled out said where none does."""
    from parity.capture.hf.settings import text_config

    checkpoint, tokens = unexplained(comparison), list(reference_trace.tokens or ())
    if not tokens or checkpoint is None or options.placement or len(tokens) > MAX_TOKENS:
        return comparison
    names = tuple(dict.fromkeys(name for name in ("logits", checkpoint) if name in candidate_trace
                                and _failed_measured(comparison, name)))
    settings = settings_to_try(text_config(reference_model.model.config).to_dict())
    if not names or not settings:
        return comparison
    progress.step(f"running the reference again under each of {len(settings)} config settings a port may read "
                  f"otherwise, to see whether one explains {checkpoint}")
    before = {name: comparison.result(name).metrics.rel_l2 for name in names}

    def read(chosen: tuple[Setting, ...]) -> Reading | None:
        return _reading(chosen, reference_model, reference_trace, candidate_trace, config, names, before, options)

    found = _search(settings, read)
    confidence = named(found)
    if confidence is not None:
        return _explained(comparison, checkpoint, found, names, confidence)
    return _ruled_out(comparison, checkpoint, settings, found)


def named(found: Reading | None) -> str | None:
    """"confirmed" or "likely" where the reading is the diagnosis; None where it is not: it moves nothing the
    check can see, or takes too little of the error away."""
    if found is None or not found.visible:
        return None
    if found.passed and found.left <= CONFIRMED_LEFT:
        return "confirmed"
    return "likely" if found.left <= LIKELY_LEFT else None


def unexplained(comparison: Comparison) -> str | None:
    """The first divergence's checkpoint, where no_known_cause is all that was said of it."""
    divergence = comparison.first_divergence
    if divergence is None:
        return None
    causes = [d.cause for d in comparison.diagnoses if d.checkpoint == divergence.checkpoint]
    return divergence.checkpoint if causes and set(causes) == {UNEXPLAINED} else None


def _failed_measured(comparison: Comparison, name: str) -> bool:
    result = comparison.result(name)
    return result is not None and result.failed and result.metrics is not None


def _search(settings: tuple[Setting, ...], read) -> Reading | None:
    """The reading that leaves least of the error: the best one setting, then others added one at a time while
    each leaves less; None where no setting could be run."""
    singles = sorted((reading for setting in settings if (reading := read((setting,))) is not None), key=_rank)
    if not singles:
        return None
    best = singles[0]
    others = [reading.settings[0] for reading in singles[1:]]   # any: one error may hide another's share
    while not best.passed and len(best.settings) < MAX_TOGETHER and best.left < CLOSER:
        taken = frozenset().union(*(setting.fields for setting in best.settings))
        together = [reading for setting in others if not setting.fields & taken
                    and (reading := read(best.settings + (setting,))) is not None]
        better = min(together, key=_rank, default=None)
        if better is None or not (better.passed or better.left < best.left * CLOSER):
            break
        best = better
    return best


def _rank(reading: Reading) -> tuple[bool, float]:
    """Readings the candidate passes against, of settings that show, first; then by the error they leave."""
    return not (reading.passed and reading.visible), reading.left


def _reading(chosen: tuple[Setting, ...], reference_model, reference_trace, candidate_trace, config,
             names: tuple[str, ...], before: dict[str, float], options) -> Reading | None:
    """The candidate held to the reference built with `chosen`; None where that reference cannot be built or
    run (a setting this model's code does not take)."""
    from parity.capture.hf.settings import built_with
    from parity.core.compare import compare_checkpoint

    try:
        variant = built_with(reference_model, changes_of(chosen))
        trace = variant.capture(list(reference_trace.tokens), checkpoints=",".join(names), raw=False,
                                start_position=options.start_position)
    except Exception:   # noqa: BLE001 - CaptureError, or the model's own code under a config it does not take
        return None
    finally:
        reference_model.rest()
    results = [compare_checkpoint(name, trace, candidate_trace, config)[0] for name in names]
    if any(result.metrics is None for result in results):
        return None
    left = max(result.metrics.rel_l2 / before[result.name] if before[result.name] > 0 else 1.0
               for result in results)
    visible = any(compare_checkpoint(name, reference_trace, trace, config)[0].failed for name in names)
    return Reading(chosen, all(result.status == PASS for result in results), visible, left,
                   results[0].metrics.rel_l2)


def _explained(comparison: Comparison, checkpoint: str, found: Reading, names: tuple[str, ...],
               confidence: str) -> Comparison:
    """The comparison with the reading in place of no_known_cause at `checkpoint`."""
    settings = found.settings
    cause = settings[0].cause if len(settings) == 1 else GENERIC
    read = " and ".join(setting.text for setting in settings)
    at = " and ".join(names)
    if confidence == "confirmed":
        clause = (f"confirmed: the reference run so agrees with the candidate at {at} within tolerance "
                  f"(rel_l2 {found.error:.2g} at {names[0]})")
    else:
        clause = (f"likely: the reference run so leaves {found.left:.0%} of the error at {at} "
                  f"(rel_l2 {found.error:.2g} at {names[0]}), beyond its tolerance")
    message = (f"the candidate computes as the reference does with {read}: a port or converter that reads "
               f"{'this setting' if len(settings) == 1 else 'these settings'} otherwise; {clause}")
    diagnosis = Diagnosis(cause, checkpoint, message, confidence=confidence)
    kept = tuple(d for d in comparison.diagnoses if not (d.checkpoint == checkpoint and d.cause == UNEXPLAINED))
    return dataclasses.replace(comparison, diagnoses=kept + (diagnosis,))


def _ruled_out(comparison: Comparison, checkpoint: str, settings: tuple[Setting, ...],
               found: Reading | None) -> Comparison:
    """The comparison with its no_known_cause saying which settings the reference was run with to no avail."""
    fields = ", ".join(dict.fromkeys(setting.field for setting in settings))
    closest = f" (closest: {' and '.join(s.field for s in found.settings)} leaves {found.left:.0%} of the error)" \
        if found is not None and found.left <= SHOWN_LEFT else ""
    clause = (f"; ruled out by running the reference again: a config setting read otherwise ({fields}){closest}"
              if found is not None else "")

    def noted(diagnosis: Diagnosis) -> Diagnosis:
        if diagnosis.checkpoint != checkpoint or diagnosis.cause != UNEXPLAINED or not clause:
            return diagnosis
        return dataclasses.replace(diagnosis, message=diagnosis.message + clause)

    return dataclasses.replace(comparison, diagnoses=tuple(noted(d) for d in comparison.diagnoses))


def with_settings_tried_on_text(comparison, reference_model, candidate_tokens, options, progress):
    """A server's failed comparison (core/sequence.py) with the config setting named under which the reference
    agrees with its tokens, where nothing else was said of it: the reference run again under each setting
    scores the server's text, and a reading is held by the same rule as a trace's (`named`), its error being the
    mean KL over the server's top-k (or, without log-probabilities, the positions that disagree)."""
    from parity.capture.hf.settings import built_with, text_config
    from parity.core.sequence import compare_sequences

    if comparison or comparison.diagnoses or options.placement:
        return comparison
    settings = settings_to_try(text_config(reference_model.model.config).to_dict())
    if not settings:
        return comparison
    progress.step(f"running the reference again under each of {len(settings)} config settings a server may read "
                  "otherwise, to see whether one explains where it parts from the reference")
    before = text_error(comparison)

    def read(chosen: tuple[Setting, ...]) -> Reading | None:
        try:
            variant = built_with(reference_model, changes_of(chosen))
            scored = variant.scoring(candidate_tokens)
            again = compare_sequences(scored, candidate_tokens, strict=options.strict,
                                      sent=dict(options.server_options))
        except Exception:   # noqa: BLE001 - CaptureError, or the model's own code under a config it does not take
            return None
        left = text_error(again) / before if before > 0 else 1.0
        return Reading(chosen, bool(again), bool(again) or left < CLOSER, left, text_error(again))

    found = _search(settings, read)
    confidence = named(found)
    if confidence is None:
        return comparison
    read_as = " and ".join(setting.text for setting in found.settings)
    cause = found.settings[0].cause if len(found.settings) == 1 else GENERIC
    clause = ("confirmed: the reference run so agrees with its top-1 at every position" if confidence == "confirmed"
              else f"likely: the reference run so leaves {found.left:.0%} of the disagreement")
    message = (f"the server computes as the reference does with {read_as}: a converter or engine that reads "
               f"{'this setting' if len(found.settings) == 1 else 'these settings'} otherwise; {clause} "
               f"({text_error_name(comparison)} {found.error:.2g}, against {before:.2g} without)")
    return dataclasses.replace(comparison, diagnoses=tuple(comparison.diagnoses) + (
        Diagnosis(cause, "logprobs", message, confidence=confidence),))


def text_error(comparison) -> float:
    """The mean KL over the candidate's top-k where it gave log-probabilities, else the share of positions whose
    top-1 differs from the reference's."""
    if comparison.mean_kl is not None:
        return comparison.mean_kl
    return 1 - comparison.agreeing / max(len(comparison.positions), 1)


def text_error_name(comparison) -> str:
    return "mean KL over the top-k" if comparison.mean_kl is not None else "share of positions that disagree"
