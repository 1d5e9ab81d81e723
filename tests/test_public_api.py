"""The curated public API: everything in __all__ imports, and the heavy parts only on first use."""

import subprocess
import sys

import parity


def test_every_public_name_resolves():
    for name in parity.__all__:
        assert getattr(parity, name) is not None, name
    assert sorted(parity.__all__) == parity.__all__


def test_importing_parity_does_not_import_torch_or_transformers():
    code = "import sys, parity; print('torch' in sys.modules, 'transformers' in sys.modules)"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.split() == ["False", "False"]


def test_unknown_attributes_raise():
    try:
        parity.not_a_thing
    except AttributeError as error:
        assert "not_a_thing" in str(error)
    else:
        raise AssertionError("parity.not_a_thing resolved")
