"""The command line's value checks, one function at a time (the CLI cases are in
tests/integration/test_bad_inputs.py)."""

import argparse

import pytest

from parity.commands import options as arguments
from parity.core.errors import OptionError


@pytest.mark.parametrize("check, text, value", [
    (arguments.positive_int, "3", 3), (arguments.count, "0", 0), (arguments.seconds, "0.5", 0.5),
    (arguments.probability, "1", 1.0), (arguments.probability, "0.9", 0.9), (arguments.tolerance, "0", 0.0),
    (arguments.positive, "0.7", 0.7),
])
def test_good_values_pass(check, text, value):
    assert check(text) == value


@pytest.mark.parametrize("check, text, says", [
    (arguments.positive_int, "0", "1 or more"), (arguments.positive_int, "-3", "1 or more, got -3"),
    (arguments.positive_int, "2.5", "a whole number"), (arguments.count, "-1", "0 or more"),
    (arguments.seconds, "0", "positive number of seconds"), (arguments.seconds, "-1", "positive"),
    (arguments.seconds, "nan", "finite"), (arguments.seconds, "inf", "finite"),
    (arguments.probability, "0", "(0, 1]"), (arguments.probability, "2", "(0, 1]"),
    (arguments.probability, "1.0000001", "(0, 1]"), (arguments.tolerance, "-1e-9", "0 or more"),
    (arguments.positive, "0", "positive"), (arguments.checkpoint_globs, ",", "is empty"),
    (arguments.checkpoint_globs, "zzz", "matches no checkpoint name"),
])
def test_bad_values_say_what_is_expected(check, text, says):
    with pytest.raises(argparse.ArgumentTypeError, match=None) as raised:
        check(text)
    assert says in str(raised.value)


@pytest.mark.parametrize("glob", ["layers.*.q,logits", "embed", "layers.1?.mlp_out", "layers.300.q", "*.weight"])
def test_checkpoint_globs_that_can_match_pass(glob):
    assert arguments.checkpoint_globs(glob) == glob


@pytest.mark.parametrize("text, says", [("-1,2", "negative id -1"), ("1,x", "'x' is not an integer"),
                                        (",", "is empty")])
def test_token_ids_name_the_bad_one(text, says):
    with pytest.raises(OptionError, match=None) as raised:
        arguments.token_ids(text)
    assert says in str(raised.value)


def test_token_ids_parse():
    assert arguments.token_ids(" 1, 2,3 ") == [1, 2, 3] and arguments.token_ids(None) is None


def test_outputs_are_checked_from_the_parsed_arguments(tmp_path):
    (tmp_path / "exists.json").write_text("{}")
    parsed = argparse.Namespace(json=str(tmp_path / "exists.json"), force=False)
    with pytest.raises(OptionError, match="pass --force"):
        arguments.check_outputs(parsed)
    arguments.check_outputs(argparse.Namespace(json=str(tmp_path / "exists.json"), force=True))
    arguments.check_outputs(argparse.Namespace(json="-", force=False))
    with pytest.raises(OptionError, match="is not a directory"):
        arguments.check_outputs(argparse.Namespace(save_traces=str(tmp_path / "exists.json"), force=False))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists.json"]   # the probes left nothing


def test_strict_takes_and_its_help_names_every_convention():
    from parity.core.conventions import CONVENTIONS

    parser = argparse.ArgumentParser()
    arguments.add_tolerances(parser)
    assert arguments.conventions("rope_pairs,layout") == frozenset({"rope_pairs", "layout"})
    assert arguments.conventions("all") == frozenset(CONVENTIONS)
    help_text = next(action.help for action in parser._actions if "--strict" in action.option_strings)
    assert all(convention in help_text for convention in CONVENTIONS), help_text
