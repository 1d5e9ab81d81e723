"""HTML sections past one forward pass: decoding through the KV cache, greedy and teacher-forced
generation, a server's token-level comparison, and tokenizer parity."""

from __future__ import annotations

from parity.core.results import GenerationComparison, SequenceComparison, TokenizerComparison
from parity.core.tokenization import describe
from parity.report.html import svg
from parity.report.html.page import Page, document, paragraph, section, table
from parity.report.registry import register
from parity.report.text import escape_html, number

CACHE_SCALE = svg.LogScale(0.01, 1000.0)   # KV-cache rel_l2 over its bound


# --- decoding -----------------------------------------------------------------------


def decode_section(decode) -> str:
    steps = len(decode.rel_l2)
    if decode.first_step is None:
        verdict = paragraph(f"Token-by-token logits after a {decode.prompt_length}-token prefill match the full pass "
                            f"at {steps}/{steps} steps (bound: {decode.basis}).")
    else:
        where = f"; inside the step, first at {decode.first_checkpoint}" if decode.first_checkpoint else ""
        verdict = paragraph(f"Decoding parts from the full pass at step {decode.first_step} (position "
                            f"{decode.position}): rel_l2 {number(decode.rel_l2[decode.first_step])} > bound "
                            f"{number(decode.bounds[decode.first_step])}{where}.")
    tips = [f"step {i} (position {decode.prompt_length - 1 + i}): rel_l2 {number(v)}, bound {number(b)}"
            for i, (v, b) in enumerate(zip(decode.rel_l2, decode.bounds))]
    parts = [verdict, svg.bars(list(decode.rel_l2), [str(i) for i in range(steps)], tips=tips,
                               bound=max(decode.bounds, default=None), highlight=decode.first_step,
                               title="rel_l2 of each decode step's logits against the full pass", width=420)]
    rows = [[escape_html(label), escape_html(number(error)),
             "matches" if error <= max(decode.bounds, default=0.0) else "<b>differs</b>"]
            for label, error in ([("chunked prefill", decode.chunked_rel_l2)] if decode.chunked_rel_l2 is not None else [])
            + [(f"batched with {side} padding{decode.batch_label}", error) for side, error in decode.batch_rel_l2]]
    if rows:
        parts.append(table(["prefill variant", "rel_l2", ""], rows, numeric={1}))
    if decode.cache is not None:
        parts.append(_cache(decode.cache))
    return section("Decoding through the KV cache", *parts, anchor="decode")


def _cache(cache) -> str:
    verdict = paragraph(f"KV cache: {cache.verdict}.")
    maps = []
    for part in ("keys", "values"):
        grid = getattr(cache, part)
        heads = max((len(row) for row in grid), default=0)
        cells = {(i, h): _cache_cell(cache, part, i, h, value) for i, row in enumerate(grid) for h, value in enumerate(row)}
        maps.append(f"<div><h3>{part}</h3>{svg.heatmap([str(i) for i in range(len(grid))], [f'h{h}' for h in range(heads)], cells)}</div>")
    legend = svg.colour_legend(CACHE_SCALE, "rel_l2 / bound (log scale)", marks=[(1.0, "bound")])
    held = ([paragraph("Grey: a layer where the forward pass's own keys or values part from the reference's; its cache "
                       "is held to the candidate's own pass there (~: that pass was not recorded: not checked).")]
            if cache.inherited or cache.unjudged else [])
    return verdict + legend + "".join(held) + f'<div class="panels">{"".join(maps)}</div>'


def _cache_cell(cache, part: str, layer: int, head: int, value: float) -> svg.Cell:
    """A head's cell: coloured by its distance from the reference's, or grey where the cache is held to the
    candidate's own pass (the forward pass parts there: that distance is the forward pass's, not the cache's)."""
    where = f"{part}, layer {layer}, head {head}: rel_l2 {number(value)} from the reference's"
    if (part, layer) in cache.inherited:
        return svg.Cell(svg.NOT_COMPARED, f"{where}, as the candidate's own pass's (the forward pass parts here, "
                                          "not the cache)")
    if (part, layer) in cache.unjudged:
        return svg.Cell(svg.NOT_COMPARED, f"{where}; not checked: the forward pass parts here and the candidate "
                                          "records no tensor to hold its cache to", "~")
    return svg.Cell(CACHE_SCALE.colour(value / cache.bound if cache.bound else value),
                    f"{where} (bound {number(cache.bound)})", "" if value <= cache.bound else "✗")


# --- generation ---------------------------------------------------------------------


def _piece(pieces, token: int) -> str:
    return pieces[token] if 0 <= token < len(pieces) else f"<{token}>"


def _tokens(pieces, tokens, divergence_step: int | None, other=None) -> str:
    spans = []
    for step, token in enumerate(tokens):
        same = other is None or (step < len(other) and other[step] == token)
        css = "same" if same else "diff"
        hot = ' style="outline:2px solid #000"' if step == divergence_step else ""
        spans.append(f'<span class="{css}"{hot} data-tip="{escape_html(f"step {step}: token {token}")}">'
                     f"{escape_html(repr(_piece(pieces, token))[1:-1])}</span>")
    return f'<div class="tokens">{"".join(spans)}</div>'


def greedy_section(generation, *, title: str = "Greedy decoding") -> str:
    pieces = generation.pieces
    divergence = generation.divergence
    step = divergence.step if divergence is not None else None
    parts = [
        "<h3>prompt</h3>", _tokens(pieces, generation.prompt, None),
        "<h3>reference</h3>", _tokens(pieces, generation.reference_tokens, step),
        "<h3>candidate</h3>", _tokens(pieces, generation.candidate_tokens, step, generation.reference_tokens),
    ]
    if divergence is None:
        parts.insert(0, paragraph(f"Both sides pick the same {len(generation.reference_tokens)} tokens."))
    else:
        kind = "a near tie, which noise can flip" if divergence.near_tie else "not a near tie: a real divergence"
        rank = divergence.candidate_rank + 1 if divergence.candidate_rank is not None else "?"
        parts.insert(0, paragraph(
            f"First different token at step {divergence.step}: reference {_piece(pieces, divergence.reference_token)!r}, "
            f"candidate {_piece(pieces, divergence.candidate_token)!r} (the reference's choice no. {rank}); margin "
            f"between the reference's top two {number(divergence.margin_nats)} nats, near ties under "
            f"{divergence.tie_rule}: {kind}."))
        parts.append(table(["the reference's top-5 there", "probability"],
                           [[escape_html(repr(_piece(pieces, token))), escape_html(number(p))]
                            for token, p in divergence.reference_top], numeric={1}))
    return section(title, *parts, anchor="greedy")


def _teacher_forced(forced) -> str:
    count = len(forced.kl)
    tips = [f"position {i}: KL {number(kl)} nats, top-1 {'agrees' if same else 'differs'}, margin {number(margin)} nats"
            for i, (kl, same, margin) in enumerate(zip(forced.kl, forced.top1, forced.margins))]
    real = set(forced.real_disagreements)
    hot = min(real) if real else None
    summary = paragraph(f"Over the reference's {count} tokens: mean KL {number(forced.mean_kl, 4)} nats, top-1 agrees "
                        f"{sum(forced.top1)}/{count}, within the reference's top 5 {sum(forced.top5)}/{count}"
                        + (f"; disagreements that are not near ties at positions {sorted(real)}" if real else "") + ".")
    return section("Teacher-forced", summary, svg.bars(list(forced.kl), [str(i) for i in range(count)], tips=tips,
                                                       highlight=hot, title="KL(reference || candidate) per position, nats"),
                   anchor="teacher-forced")


def _sampler(sampler) -> str:
    if sampler.first_step is None:
        text = (f"Same distribution as the reference sampler at every step (largest total variation "
                f"{number(max(sampler.total_variation, default=0.0), 2)}).")
    else:
        fitted = (f"; it samples as if at temperature {number(sampler.fitted_temperature)}"
                  if sampler.fitted_temperature else "")
        text = (f"Differs from the reference sampler from step {sampler.first_step}: total variation "
                f"{number(sampler.total_variation[sampler.first_step])}, KL {number(sampler.kl[sampler.first_step])}{fitted}.")
    tips = [f"step {i}: total variation {number(tv)}, KL {number(kl)}"
            for i, (tv, kl) in enumerate(zip(sampler.total_variation, sampler.kl))]
    return section("Sampler", paragraph(text), svg.bars(list(sampler.total_variation), [str(i) for i in range(len(tips))],
                                                        tips=tips, highlight=sampler.first_step,
                                                        title="total variation per step"), anchor="sampler")


@register(GenerationComparison, "html")
def render_generation(generation: GenerationComparison) -> str:
    return document(generation_page(generation))


def generation_page(generation) -> Page:
    divergence = generation.divergence
    headline = (f"the same {len(generation.reference_tokens)} greedy tokens" if divergence is None else
                f"greedy decoding parts at step {divergence.step}" + (" (a near tie)" if divergence.near_tie else ""))
    headline += f"; teacher-forced mean KL {number(generation.teacher_forced.mean_kl, 4)} nats"
    sections = [greedy_section(generation), _teacher_forced(generation.teacher_forced)]
    if generation.sampler is not None:
        sections.append(_sampler(generation.sampler))
    return Page("generation", bool(generation), escape_html(headline), tuple(sections))


# --- a server's tokens --------------------------------------------------------------


@register(SequenceComparison, "html")
def render_sequence(comparison: SequenceComparison) -> str:
    return document(sequence_page(comparison))


def sequence_page(comparison) -> Page:
    positions = comparison.positions
    rows, classes = [], []
    for p in positions:
        symbol = "✓" if p.agrees else ("≈ near tie" if p.near_tie else "✗")
        rows.append([str(p.index), escape_html(repr(p.piece)), escape_html(symbol + (" (generated)" if p.generated else "")),
                     escape_html(repr(p.reference_top[0][0]) if p.reference_top else "-"),
                     escape_html(repr(p.candidate_top1) if p.candidate_top1 is not None else "-"),
                     escape_html(number(p.reference_prob_of_piece)), escape_html(number(p.margin_nats)),
                     escape_html(number(p.kl_topk))])
        classes.append("" if p.agrees or p.near_tie else "fail")
    kl = [p.kl_topk if p.kl_topk is not None else 0.0 for p in positions]
    tips = [f"token {p.index} {p.piece!r}: KL over top-k {number(p.kl_topk)}, p_ref(token) "
            f"{number(p.reference_prob_of_piece)}" for p in positions]
    first = comparison.first_divergence
    hot = next((i for i, p in enumerate(positions) if p is first), None)
    headline = (comparison.headline +
                (f"; first divergence at token {first.index} ({first.piece!r})" if first is not None else ""))
    sections = [
        section("Per token", svg.bars(kl, [str(p.index) for p in positions], tips=tips, highlight=hot,
                                      title="KL over the top-k, per token"),
                table(["#", "token", "", "ref top-1", "cand top-1", "p_ref(token)", "margin", "KL top-k"], rows,
                      row_classes=classes, numeric={0, 5, 6, 7}), anchor="tokens"),
        _findings(comparison.diagnoses, comparison.notes),
    ]
    return Page("tokens", bool(comparison), escape_html(headline), tuple(s for s in sections if s))


def _findings(diagnoses, notes) -> str:
    items = [f'<div class="diagnosis"><b>{escape_html(d.cause)}</b>: {escape_html(d.message)}</div>' for d in diagnoses]
    items += [f'<div class="note">{escape_html(note)}</div>' for note in notes]
    return section("Diagnoses and notes", *items, anchor="diagnoses") if items else ""


# --- tokenizers ---------------------------------------------------------------------


@register(TokenizerComparison, "html")
def render_tokenizer(comparison: TokenizerComparison) -> str:
    return document(tokenizer_page(comparison))


def tokenizer_page(comparison) -> Page:
    parts = [table(None, [["reference", escape_html(comparison.reference)],
                              ["candidate", escape_html(comparison.candidate)]])]
    for text in comparison.texts:
        mark = "✓" if text else "✗"
        parts.append(f"<h3>{mark} {escape_html(text.name)}</h3>"
                     f'<p class="mono muted">{escape_html(repr(text.text), limit=400)}</p>'
                     + paragraph(f"reference {len(text.reference_ids)} tokens, candidate {len(text.candidate_ids)}"))
        for difference in text.differences:
            try:
                meaning = describe(difference.pattern)
            except KeyError:
                meaning = ""
            run = lambda tokens: '<div class="tokens">' + "".join(  # noqa: E731
                f'<span class="diff">{token} {escape_html(repr(piece))}</span>' for token, piece in tokens) + "</div>"
            parts.append(f'<div class="diagnosis"><b>{escape_html(difference.pattern)}</b> at token '
                         f"{difference.reference_start}: {escape_html(meaning)}"
                         f"reference{run(difference.reference)}candidate{run(difference.candidate)}</div>")
    agreeing = sum(map(bool, comparison.texts))
    headline = f"{agreeing}/{len(comparison.texts)} texts tokenize identically"
    if not comparison:
        headline += ": " + ", ".join(f"{pattern} x{count}" for pattern, count in comparison.patterns.items())
    notes = "".join(f'<div class="note">{escape_html(note)}</div>' for note in comparison.notes)
    return Page("tokenizer", bool(comparison), escape_html(headline), (section("Texts", *parts, notes, anchor="texts"),))
