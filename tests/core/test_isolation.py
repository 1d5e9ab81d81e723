"""A child process's deadlines: each step is held to the user's per-step time; the child's own start (the
interpreter, parity's imports, torch's), before it names a step, is held to START_TIMEOUT_S instead."""

import pytest

from parity.core import isolation
from parity.core.errors import OptionError

CHILD = '''
import time

from parity.core.isolation import child_events, read_request

request = read_request()
time.sleep(request["start_s"])              # the child's own start: imports, before any step
with child_events() as emit:
    emit("step", name="the user's step")
    time.sleep(request["step_s"])
    emit("result", value=1)
'''


@pytest.fixture
def child(tmp_path, monkeypatch):
    (tmp_path / "slow_child.py").write_text(CHILD)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))

    def run(start_s: float, step_s: float, step_timeout_s: float):
        return isolation.run_child("slow_child", {"start_s": start_s, "step_s": step_s},
                                   step_timeout_s=step_timeout_s, what="the candidate x.py:f")

    return run


def test_a_slow_start_is_not_held_to_the_users_step_time(child):
    assert [event["value"] for event in child(start_s=1.5, step_s=0.0, step_timeout_s=0.5)] == [1]


def test_a_step_past_its_time_is_one_line_naming_it(child):
    with pytest.raises(OptionError, match=r"x.py:f did not finish the user's step within 0.5 s \(stopped\)"):
        child(start_s=0.0, step_s=30.0, step_timeout_s=0.5)


def test_a_start_past_its_own_allowance_says_so(child, monkeypatch):
    monkeypatch.setattr(isolation, "START_TIMEOUT_S", 1.0)
    with pytest.raises(OptionError, match=r"parity's child process for the candidate x.py:f did not start within "
                                          r"1 s \(stopped\) before running any of its code"):
        child(start_s=30.0, step_s=0.0, step_timeout_s=60.0)
