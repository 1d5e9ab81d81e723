import dataclasses
import re

import pytest

import report_cases
from browser import colours, screenshot
from parity.core.results import PositionResult, SequenceComparison, TextTokens, TokenDifference, TokenizerComparison
from parity.report import html
from parity.report.html.svg import LogScale, colour


def test_a_failing_comparison_shows_verdict_divergence_heatmap_depth_and_diagnosis():
    comparison = report_cases.calibrated_failure()
    page = html.render(comparison)
    assert '<header class="verdict fail"><h1>FAIL</h1>' in page
    assert "first divergence at <b>layers.2.mlp_act</b>" in page
    assert 'id="heatmap"' in page and "rel_l2 / noise floor (log scale)" in page
    assert 'id="depth"' in page and page.count('class="chart panel"') == 16   # one panel per layer kind
    assert "<b>activation_variant</b> at <code>layers.2.mlp_act</code>" in page
    assert "rel_l2 by token position" in page and "a note from the comparison" in page
    largest = comparison.first_divergence.worst_elements
    assert len(largest) == 5 and "<h3>The largest differences</h3>" in page
    assert f"<td>{list(largest[0][0])}</td>" in page
    # the hover details of the divergent cell: its numbers against the noise floor
    tip = re.search(r'data-tip="(layers\.2\.mlp_act: fail[^"]*)"', page).group(1)
    assert "x the noise" in tip and "bound" in tip
    assert 'id="metadata"' in page and "transformers 5.0 (test)" in page


def test_colour_scale_is_logarithmic_and_clamped():
    scale = LogScale(0.01, 1000.0)
    assert scale.fraction(1.0) == pytest.approx(0.4)
    assert scale.fraction(10.0) - scale.fraction(1.0) == pytest.approx(scale.fraction(1.0) - scale.fraction(0.1))
    assert scale.fraction(1e-9) == 0.0 and scale.fraction(1e9) == 1.0 and scale.fraction(float("nan")) == 1.0
    assert colour(0.0) != colour(0.5) != colour(1.0)


def test_metadata_and_names_are_escaped_and_stripped_of_control_characters():
    comparison = report_cases.calibrated_failure(metadata={"producer": report_cases.HOSTILE,
                                                           report_cases.HOSTILE: report_cases.HOSTILE})
    page = html.render(comparison)
    page.encode("utf-8")  # the lone surrogate is gone
    assert page.count("<script") == 1 and "alert('x')</script>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert '"onmouseover' not in page and "&quot;onmouseover=alert(1)" in page
    assert not re.search("[\x00-\x08\x0b\x0c\x0e-\x1f]", page)


def test_the_page_needs_no_network():
    page = html.render(report_cases.calibrated_failure())
    assert "default-src 'none'" in page
    links = re.findall(r"(?:src|href)\s*=\s*[\"']?([^\"' >]+)", page)
    assert all(link.startswith("#") or link.startswith("data:") for link in links), links
    assert set(re.findall(r"https?://[^\"' )]+", page)) <= {"http://www.w3.org/2000/svg"}


def test_results_are_read_generically_new_statuses_included():
    page = html.render(report_cases.with_unknown_status(report_cases.calibrated_failure()))
    assert "layers.0.q_norm: not_checked" in page and "the candidate has no q_norm tap" in page
    assert "1 not_checked" in page


def test_decode_greedy_and_generation_sections():
    comparison = dataclasses.replace(report_cases.calibrated_failure(), decode=report_cases.decode(),
                                     generation=report_cases.generation())
    page = html.render(comparison)
    assert "Decoding parts from the full pass at step 2 (position 7)" in page
    assert "inside the step, first at layers.1.k_rope" in page
    assert "KV cache: the keys of layer 1, head 1 differ" in page and "batched with left padding" in page
    assert "First different token at step 2" in page and "&#x27;&lt;b&gt;&amp;&#x27;" in page
    page = html.render(report_cases.generation())
    assert 'id="teacher-forced"' in page and 'id="sampler"' in page and "temperature 0.7" in page


def test_a_cache_held_to_the_candidate_s_own_pass_is_grey_where_the_forward_pass_parts():
    from parity.core.results import CacheComparison

    cache = CacheComparison(keys=((0.3, 0.4), (1e-7, 1e-7)), values=((0.2, 0.2), (1e-7, 1e-7)), bound=1e-5, first=None,
                            inherited=(("keys", 0),), unjudged=(("values", 0),))
    comparison = dataclasses.replace(report_cases.calibrated_failure(),
                                     decode=dataclasses.replace(report_cases.decode(failing=False), cache=cache))
    page = html.render(comparison)
    tip = re.search(r'data-tip="(keys, layer 0, head 0:[^"]*)"', page).group(1)
    assert "as the candidate&#x27;s own pass&#x27;s" in tip and "bound" not in tip   # not its distance's colour
    assert re.search(r'data-tip="values, layer 0, head 1:[^"]*not checked', page)
    assert "Grey: a layer where the forward pass" in page
    passing_cache = html.render(dataclasses.replace(comparison, decode=report_cases.decode(failing=False)))
    assert page.count("✗") == passing_cache.count("✗")   # no cache cell marked failed


def test_token_and_tokenizer_pages():
    position = PositionResult(3, 10, " world", True, ((" World", 0.7), (" world", 0.2)), " world", 0.2, 1.25, 0.3)
    page = html.render(SequenceComparison((position,), 0, position, (), ("no echo",), "Hello world"))
    assert "FAIL" in page and "first divergence at token 3" in page and "no echo" in page
    difference = TokenDifference(0, ((1, "<s>"),), 0, (), "missing_bos")
    page = html.render(TokenizerComparison((TextTokens("bos", "hi", (1, 5), (5,), (difference,)),), "hf", "mine"))
    assert "missing_bos" in page and "0/1 texts tokenize identically" in page and "&lt;s&gt;" in page


def test_write_refuses_to_replace_a_file_without_overwrite(tmp_path):
    from parity.core.errors import OutputError

    path = tmp_path / "report.html"
    html.write(report_cases.calibrated_failure(), path)
    with pytest.raises(OutputError, match="exists"):
        html.write(report_cases.calibrated_failure(), path)
    html.write(report_cases.calibrated_failure(), path, overwrite=True)


# --- in a real browser ---------------------------------------------------------------


def test_chromium_renders_the_report_without_console_errors(tmp_path):
    comparison = dataclasses.replace(report_cases.calibrated_failure(metadata={"producer": report_cases.HOSTILE}),
                                     decode=report_cases.decode(), generation=report_cases.generation())
    page = tmp_path / "report.html"
    html.write(comparison, page)
    png = tmp_path / "report.png"
    assert screenshot(page, png) == []
    distinct, inked = colours(png)
    assert distinct > 50 and inked > 0.05, (distinct, inked)   # headers, heatmap colours, charts: not blank


def test_the_browser_check_sees_errors_and_blank_pages(tmp_path):
    """The check above can fail: a page that throws, one that logs an error, one that fetches, one blank."""
    for body, expected in [("<script>throw new Error('boom')</script>", "boom"),
                           ("<script>console.error('bad thing')</script>", "bad thing"),
                           ('<img src="http://127.0.0.1:9/x.png">', "violates")]:
        page = tmp_path / "bad.html"
        page.write_text(f'<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" content="{html.CSP}">'
                        f"</head><body><h1>page</h1>{body}</body></html>")
        messages = screenshot(page, tmp_path / "bad.png")
        assert any(expected in line for line in messages), (expected, messages)
    page.write_text("<!DOCTYPE html><html><body></body></html>")
    screenshot(page, tmp_path / "blank.png")
    distinct, inked = colours(tmp_path / "blank.png")
    assert distinct <= 2 and inked < 0.01


def test_hovering_a_heatmap_cell_shows_its_numbers_in_chromium(tmp_path):
    """The page's own script, driven by a mouseover on a cell (a probe script appended to the page logs the tip)."""
    page = html.render(report_cases.calibrated_failure())
    probe = ("<script>var cell = document.querySelector('.heatmap [data-tip] rect');"
             "cell.dispatchEvent(new MouseEvent('mouseover', {bubbles: true, clientX: 50, clientY: 50}));"
             "var tip = document.getElementById('tip');"
             "console.log('TIP ' + (tip.hidden ? 'hidden' : 'shown') + ' | ' + tip.textContent.replace(/\\n/g, ' | '));"
             "</script>")
    path = tmp_path / "probe.html"
    path.write_text(page.replace("</body>", probe + "</body>"))
    messages = screenshot(path, tmp_path / "probe.png", width=800, height=600)
    assert len(messages) == 1 and "TIP shown | layers.0.attn_norm: pass | rel_l2 " in messages[0], messages
    assert "x the noise" in messages[0]
