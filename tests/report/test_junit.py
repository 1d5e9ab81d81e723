"""The JUnit XML report, checked the way CI servers read it (Jenkins' junit plugin, GitLab, GitHub actions)."""

import dataclasses
import re
import xml.etree.ElementTree as ET

import report_cases
from parity.core.results import PositionResult, SequenceComparison, TextTokens, TokenDifference, TokenizerComparison
from parity.report import junit

SUITE_CHILDREN = {"properties", "testcase", "system-out", "system-err"}
CASE_CHILDREN = {"failure", "error", "skipped", "system-out", "system-err"}
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}$")   # the JUnit schema's: no zone, no fraction


def validated(result) -> ET.Element:
    """Parse the report and check the elements and attributes JUnit readers rely on."""
    root = ET.fromstring(junit.to_xml(result))
    assert root.tag == "testsuites"
    suites = list(root)
    assert suites and all(suite.tag == "testsuite" for suite in suites)
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for suite in suites:
        assert suite.get("name") and TIMESTAMP.match(suite.get("timestamp"))
        float(suite.get("time"))
        assert {child.tag for child in suite} <= SUITE_CHILDREN
        for prop in suite.iter("property"):
            assert prop.get("name") is not None and prop.get("value") is not None
        cases = suite.findall("testcase")
        counted = {"tests": len(cases), "failures": sum(c.find("failure") is not None for c in cases),
                   "errors": sum(c.find("error") is not None for c in cases),
                   "skipped": sum(c.find("skipped") is not None for c in cases)}
        for key, value in counted.items():
            assert int(suite.get(key)) == value, key
            totals[key] += value
        for case in cases:
            assert case.get("name") and case.get("classname")
            float(case.get("time"))
            assert {child.tag for child in case} <= CASE_CHILDREN
            assert sum(child.tag in ("failure", "error", "skipped") for child in case) <= 1
            failure = case.find("failure")
            if failure is not None:
                assert failure.get("message") and failure.get("type")
    for key, value in totals.items():
        assert int(root.get(key)) == value, key
    return root


def case(root, classname, name):
    return next(c for c in root.iter("testcase") if c.get("classname") == classname and c.get("name") == name)


def test_one_testcase_per_checkpoint_with_its_layer_as_classname_and_metrics_in_failures():
    comparison = report_cases.with_unknown_status(report_cases.calibrated_failure())
    root = validated(comparison)
    assert len(root.findall("testsuite/testcase")) == len(comparison.checkpoints)
    assert int(root.get("failures")) == comparison.failed_count
    assert case(root, "layers.0", "attn_norm").find("failure") is None
    failure = case(root, "layers.2", "mlp_act").find("failure")
    assert re.match(r"rel_l2 0\.0\d+ > bound 0\.00\d+, \d+x the noise floor", failure.get("message"))
    assert "mismatched elements: 96 / 96" in failure.text and "cosine" in failure.text
    assert "diagnosis activation_variant: the MLP activation differs" in failure.text
    assert case(root, "model", "logits").find("failure") is not None
    skipped = case(root, "layers.0", "q_norm").find("skipped")
    assert skipped.get("message") == "not_checked: the candidate has no q_norm tap"
    properties = {p.get("name"): p.get("value") for p in root.iter("property")}
    assert properties["first_divergence"] == "layers.2.mlp_act" and properties["verdict"] == "fail"
    assert properties["diagnosis.activation_variant"].startswith("layers.2.mlp_act: ")


def test_decode_and_greedy_are_testcases():
    comparison = dataclasses.replace(report_cases.calibrated_failure(), decode=report_cases.decode(),
                                     generation=report_cases.generation())
    root = validated(comparison)
    assert "step 2 (position 7)" in case(root, "decode", "token_by_token").find("failure").get("message")
    assert case(root, "decode", "kv_cache").find("failure") is not None
    assert case(root, "decode", "chunked_prefill").find("failure") is None
    assert case(root, "decode", "batch_left_padding").find("failure") is not None
    assert "not a near tie" in case(root, "generation", "greedy").find("failure").get("message")
    assert case(root, "generation", "teacher_forced").find("failure") is not None
    passing = dataclasses.replace(report_cases.calibrated_failure(), decode=report_cases.decode(failing=False),
                                  generation=report_cases.generation(failing=False))
    root = validated(passing)
    assert all(case(root, "decode", name).find("failure") is None for name in ("token_by_token", "kv_cache"))
    assert case(root, "generation", "greedy").find("failure") is None


def test_missing_checkpoints_are_skipped_not_passed():
    comparison = dataclasses.replace(report_cases.calibrated_failure(), missing=("layers.1.q_norm",))
    skipped = case(validated(comparison), "layers.1", "q_norm").find("skipped")
    assert "only the reference has layers.1.q_norm" in skipped.get("message")


def test_hostile_metadata_still_gives_well_formed_xml():
    hostile = report_cases.HOSTILE
    comparison = report_cases.calibrated_failure(metadata={"producer": hostile, hostile: hostile})
    xml = junit.to_xml(comparison)
    validated(comparison)
    assert not re.search(rb"[\x00-\x08\x0b\x0c\x0e-\x1f]", xml)
    properties = {p.get("name"): p.get("value") for p in ET.fromstring(xml).iter("property")}
    assert properties["candidate.producer"].startswith("<script>alert('x')</script>")


def test_generation_tokens_and_tokenizer_results():
    root = validated(report_cases.generation())
    assert [c.get("name") for c in root.iter("testcase")] == ["greedy", "teacher_forced", "sampler"]
    position = PositionResult(3, 10, " world", True, ((" World", 0.7), (" world", 0.2)), " world", 0.2, 1.25, 0.3)
    root = validated(SequenceComparison((position,), 0, position))
    assert case(root, "tokens", "3 ' world' generated").find("failure") is not None
    difference = TokenDifference(0, ((1, "<s>"),), 0, (), "missing_bos")
    root = validated(TokenizerComparison((TextTokens("bos", "hi", (1, 5), (5,), (difference,)),
                                          TextTokens("plain", "a", (7,), (7,))), "hf", "mine"))
    assert case(root, "tokenizer", "bos").find("failure").get("message") == "1 differences: missing_bos"
    assert case(root, "tokenizer", "plain").find("failure") is None
