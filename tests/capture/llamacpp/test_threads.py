"""How many threads llama.cpp is given when the caller names none."""

import os

import pytest

from parity.capture.llamacpp.runner import thread_budget


@pytest.mark.parametrize("setting, threads", [("3", 3), ("1", 1), ("0", 1)])
def test_omp_num_threads_is_the_budget(monkeypatch, setting, threads):
    monkeypatch.setenv("OMP_NUM_THREADS", setting)
    assert thread_budget() == threads


@pytest.mark.parametrize("setting", [None, "", "four"])
def test_without_a_budget_every_core(monkeypatch, setting):
    if setting is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", setting)
    assert thread_budget() == (os.cpu_count() or 1)
