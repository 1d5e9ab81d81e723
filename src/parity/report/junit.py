"""The JUnit XML report, as CI servers read it (Jenkins, GitLab, GitHub test-report actions).

    <testsuites name="parity" tests= failures= errors= skipped= time=>
      <testsuite name="parity.layers" tests= failures= errors= skipped= time= timestamp=>
        <properties><property name="first_divergence" value="layers.7.mlp_act"/> ...</properties>
        <testcase classname="layers.7" name="mlp_act" time="0">
          <failure type="divergence" message="rel_l2 0.0034 > bound 0.0017, 6x the noise floor 0.00057">metrics</failure>
        </testcase>
        <testcase classname="layers.7" name="q"><skipped message="not comparable: ..."/></testcase>
        <testcase classname="decode" name="token_by_token"/> ...

One testcase per checkpoint (classname: its layer, `layers.N`, or `model` for
checkpoints outside the blocks); a failure carries the metrics; a checkpoint
that could not be compared, or that one trace lacks, is skipped with the reason.
Decoding, greedy and teacher-forced generation, the sampler, a server's tokens
and each tokenizer text are testcases too. Text is stripped of the control
characters XML 1.0 cannot hold, then escaped by ElementTree.
"""

from __future__ import annotations

import socket
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from parity.core.names import parse
from parity.core.results import (FAIL, PASS, CheckpointResult, Comparison, GenerationComparison, SequenceComparison,
                                 TokenizerComparison)
from parity.report import registry
from parity.report.text import number, printable, without_mentions

PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"


@dataclass(frozen=True)
class Case:
    classname: str
    name: str
    outcome: str = PASSED
    message: str = ""          # one line: the failure's or the skip's reason
    details: str = ""          # the failure's body: metrics, evidence

    def __repr__(self) -> str:
        return f"<Case {self.classname}.{self.name} {self.outcome}>"


def to_xml(result, *, suite: str | None = None) -> bytes:
    """The JUnit XML of any result parity produces."""
    return registry.render(result, "junit", suite=suite).encode("utf-8")


def write(result, path: str | Path, *, overwrite: bool = False) -> Path | None:
    return registry.write(result, "junit", path, overwrite=overwrite)


def _xml(cases: list[Case], properties: list[tuple[str, str]], kind: str, suite: str | None) -> str:
    counts = {outcome: sum(case.outcome == outcome for case in cases) for outcome in (FAILED, SKIPPED)}
    totals = {"tests": str(len(cases)), "failures": str(counts[FAILED]), "errors": "0",
              "skipped": str(counts[SKIPPED]), "time": "0"}
    root = ET.Element("testsuites", {"name": "parity", **totals})
    element = ET.SubElement(root, "testsuite", {
        "name": _clean(suite or f"parity.{kind}"), **totals,
        "timestamp": datetime.now(timezone.utc).replace(microsecond=0, tzinfo=None).isoformat(),
        "hostname": _clean(socket.gethostname())})
    if properties:
        holder = ET.SubElement(element, "properties")
        for name, value in properties:
            ET.SubElement(holder, "property", {"name": _clean(name), "value": _clean(value)})
    for case in cases:
        testcase = ET.SubElement(element, "testcase", {"classname": _clean(case.classname), "name": _clean(case.name),
                                                       "time": "0"})
        if case.outcome == FAILED:
            failure = ET.SubElement(testcase, "failure", {"type": "divergence", "message": _clean(case.message)})
            failure.text = _clean(case.details or case.message)
        elif case.outcome == SKIPPED:
            ET.SubElement(testcase, "skipped", {"message": _clean(case.message)})
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True).decode("utf-8") + "\n"


def _clean(text: object) -> str:
    return without_mentions(printable(text))


@registry.register(Comparison, "junit")
def _comparison(comparison: Comparison, *, suite: str | None = None) -> str:
    return _xml(*_comparison_cases(comparison), suite)


@registry.register(GenerationComparison, "junit")
def _generation(generation: GenerationComparison, *, suite: str | None = None) -> str:
    return _xml(_generation_cases(generation), [], "generation", suite)


@registry.register(SequenceComparison, "junit")
def _sequence(comparison: SequenceComparison, *, suite: str | None = None) -> str:
    return _xml(_sequence_cases(comparison), [(f"diagnosis.{d.cause}", d.message) for d in comparison.diagnoses],
                "tokens", suite)


@registry.register(TokenizerComparison, "junit")
def _tokenizer(comparison: TokenizerComparison, *, suite: str | None = None) -> str:
    return _xml(_tokenizer_cases(comparison), [("reference", comparison.reference), ("candidate", comparison.candidate)],
                "tokenizer", suite)


# --- layers -------------------------------------------------------------------------


def _comparison_cases(comparison: Comparison) -> tuple[list[Case], list[tuple[str, str]], str]:
    evidence: dict[str, list[str]] = {}
    for diagnosis in comparison.diagnoses:
        evidence.setdefault(diagnosis.checkpoint, []).append(f"diagnosis {diagnosis.cause}: {diagnosis.message}")
    cases = [_checkpoint_case(result, evidence.get(result.name, [])) for result in comparison.checkpoints]
    for names, side in ((comparison.missing, "reference"), (comparison.extra, "candidate")):
        cases += [Case(*_where(name), SKIPPED, f"not checked: only the {side} has {name}") for name in names]
    if comparison.decode is not None:
        cases += _decode_cases(comparison.decode)
    if comparison.generation is not None:
        cases += _generation_cases(comparison.generation)
    properties = [("verdict", comparison.verdict), ("calibrated", str(comparison.calibrated).lower())]
    for label, divergence in (("first_divergence", comparison.first_divergence), ("origin", comparison.origin)):
        if divergence is not None:
            properties.append((label, divergence.checkpoint))
            if divergence.position is not None:
                properties.append((f"{label}.position", str(divergence.position)))
    properties += [(f"diagnosis.{d.cause}", f"{d.checkpoint}: {d.message}") for d in comparison.diagnoses]
    properties += [("note", note) for note in comparison.notes]
    properties += [(f"reference.{key}", _short(value)) for key, value in comparison.reference_metadata.items()]
    properties += [(f"candidate.{key}", _short(value)) for key, value in comparison.candidate_metadata.items()]
    return cases, properties, "layers"


def _short(value) -> str:
    return without_mentions(printable(value, limit=300))


def _where(name: str) -> tuple[str, str]:
    checkpoint = parse(name)
    if checkpoint is not None and checkpoint.layer is not None:
        return f"layers.{checkpoint.layer}", checkpoint.kind
    return "model", name


def _checkpoint_case(result: CheckpointResult, evidence: list[str]) -> Case:
    classname, name = _where(result.name)
    if result.status == PASS:
        return Case(classname, name)
    if result.status != FAIL:
        return Case(classname, name, SKIPPED, f"{result.status}: {result.reason or 'no reason given'}")
    message = result.explanation[0] if result.explanation else "failed"
    return Case(classname, name, FAILED, message, "\n".join(_metric_lines(result) + evidence))


def _metric_lines(result: CheckpointResult) -> list[str]:
    """The explanation, then every number of the result (a CI server shows them as the failure's body)."""
    lines = [f"checkpoint {result.name}",
             f"shape reference {list(result.shape_reference)}, candidate {list(result.shape_candidate)}",
             *result.explanation]
    metrics, tolerance = result.metrics, result.tolerance
    if metrics is not None:
        lines += [f"mismatched elements: {metrics.mismatched} / {metrics.numel}",
                  f"max_abs {number(metrics.max_abs)} at index {list(metrics.worst_index or ())} (token "
                  f"{metrics.worst_position})  mean_abs {number(metrics.mean_abs)}  rel_l2 {number(metrics.rel_l2)}"
                  f"  cosine {number(metrics.cosine, 6)}  max_rel {number(metrics.max_rel)}"
                  f"  worst token rel_l2 {number(metrics.position_rel_l2)}",
                  f"non-finite: candidate {metrics.nan_candidate} NaN, {metrics.inf_candidate} Inf; "
                  f"reference {metrics.nan_reference} NaN, {metrics.inf_reference} Inf"]
    if tolerance is not None:
        lines.append(f"tolerance: {tolerance.basis}")
    lines += [f"layout: {result.layout}"] if result.layout else []
    return lines


# --- past one forward pass ----------------------------------------------------------


def _decode_cases(decode) -> list[Case]:
    steps = ", ".join(f"{i}:{number(e)}/{number(b)}" for i, (e, b) in enumerate(zip(decode.rel_l2, decode.bounds)))
    details = f"rel_l2/bound per step: {steps}\nbound: {decode.basis}"
    if decode.first_step is None:
        cases = [Case("decode", "token_by_token", details=details)]
    else:
        where = f"; inside the step, first at {decode.first_checkpoint}" if decode.first_checkpoint else ""
        cases = [Case("decode", "token_by_token", FAILED,
                      f"parts from the full pass at step {decode.first_step} (position {decode.position}): rel_l2 "
                      f"{number(decode.rel_l2[decode.first_step])} > {number(decode.bounds[decode.first_step])}{where}",
                      details)]
    if decode.cache is not None:
        cache = decode.cache
        cases.append(Case("decode", "kv_cache") if cache.first is None else Case(
            "decode", "kv_cache", FAILED, f"the {cache.first[0]} of layer {cache.first[1]}, head {cache.first[2]} "
                                          f"differ from the reference's after the prefill (bound {number(cache.bound)})"))
    bound = max(decode.bounds, default=0.0)
    variants = ([("chunked_prefill", decode.chunked_rel_l2)] if decode.chunked_rel_l2 is not None else []) + \
        [(f"batch_{side}_padding", error) for side, error in decode.batch_rel_l2]
    for name, error in variants:
        cases.append(Case("decode", name) if error <= bound else
                     Case("decode", name, FAILED, f"rel_l2 {number(error)} > bound {number(bound)}"))
    return cases


def _generation_cases(generation) -> list[Case]:
    pieces = generation.pieces
    piece = lambda token: repr(pieces[token]) if 0 <= token < len(pieces) else f"<{token}>"  # noqa: E731
    divergence = generation.divergence
    if divergence is None:
        cases = [Case("generation", "greedy")]
    else:
        message = (f"first different token at step {divergence.step}: reference {piece(divergence.reference_token)}, "
                   f"candidate {piece(divergence.candidate_token)}; margin {number(divergence.margin_nats)} nats")
        top = ", ".join(f"{piece(token)} {number(p)}" for token, p in divergence.reference_top)
        cases = [Case("generation", "greedy") if divergence.near_tie else
                 Case("generation", "greedy", FAILED, message + f" (not a near tie: under {divergence.tie_rule})",
                      f"{message}\nreference top-5: {top}")]
    forced = generation.teacher_forced
    real = forced.real_disagreements
    summary = (f"mean KL {number(forced.mean_kl, 4)} nats; top-1 agrees {sum(forced.top1)}/{len(forced.top1)}, "
               f"top-5 {sum(forced.top5)}/{len(forced.top5)}")
    over = forced.over_bound
    if real:
        cases.append(Case("generation", "teacher_forced", FAILED,
                          f"top-1 differs (not near ties) at positions {real}; {summary}"))
    elif over:
        cases.append(Case("generation", "teacher_forced", FAILED,
                          f"KL over the bound {number(forced.kl_bound)} nats ({forced.kl_basis}) at positions "
                          f"{over}; {summary}"))
    else:
        cases.append(Case("generation", "teacher_forced"))
    sampler = generation.sampler
    if sampler is not None:
        cases.append(Case("generation", "sampler") if sampler.first_step is None else Case(
            "generation", "sampler", FAILED, f"differs from the reference sampler from step {sampler.first_step}: "
                                             f"total variation {number(sampler.total_variation[sampler.first_step])}"))
    return cases


def _sequence_cases(comparison) -> list[Case]:
    cases = []
    for position in comparison.positions:
        name = f"{position.index} {position.piece!r}" + (" generated" if position.generated else "")
        if position.agrees or position.near_tie:
            cases.append(Case("tokens", name))
        else:
            top = ", ".join(f"{piece!r} {number(p)}" for piece, p in position.reference_top)
            chosen = position.piece if position.generated else position.candidate_top1
            cases.append(Case("tokens", name, FAILED, f"the candidate's {chosen!r} is not the reference's top-1 "
                                                      f"({number(position.gap_nats)} nats below it)",
                              f"reference top-k: {top}"))
    return cases


def _tokenizer_cases(comparison) -> list[Case]:
    cases = []
    for text in comparison.texts:
        if text:
            cases.append(Case("tokenizer", text.name))
            continue
        details = "\n".join(f"{d.pattern} at token {d.reference_start}: reference {list(d.reference)}, "
                            f"candidate {list(d.candidate)}" for d in text.differences)
        patterns = ", ".join(dict.fromkeys(d.pattern for d in text.differences))
        cases.append(Case("tokenizer", text.name, FAILED, f"{len(text.differences)} differences: {patterns}", details))
    return cases
