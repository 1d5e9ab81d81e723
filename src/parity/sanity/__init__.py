"""`parity sanity`: 11 component tests of a hand-written causal LM against transformers' own.

    report = run_sanity(model, SanityConfig())      # model: a torch.nn.Module with .config
    bool(report), report.to_dict()

Each test compares one component of the candidate with the reference's, on the
same random inputs and the same weights (see `pair.py` for how components are
found and called). A test that raises in the candidate's code fails with the
error; one that cannot run on this candidate is skipped with the reason.
"""

from __future__ import annotations

import datetime
import platform
from collections.abc import Callable

from parity.core.errors import OptionError, ParityError
from parity.core.isolation import ExitCalled, guarded, is_user_exit
from parity.core.results.sanity import FAILED, SKIPPED, SanityReport, TestResult
from parity.sanity.budget import check_memory
from parity.sanity.components import (test_attention, test_decoder_layer, test_mlp, test_norm, test_rope,
                                      test_structure)
from parity.sanity.pair import Pair, SanityConfig, UnusableOutput
from parity.sanity.reference import build_pair
from parity.sanity.whole_model import test_forward, test_gradients, test_kv_cache, test_loss, test_stability

TESTS: dict[str, Callable[[Pair], TestResult]] = {
    "structure": test_structure, "norm": test_norm, "rope": test_rope, "attention": test_attention,
    "mlp": test_mlp, "decoder_layer": test_decoder_layer, "forward": test_forward, "loss": test_loss,
    "kv_cache": test_kv_cache, "gradients": test_gradients, "stability": test_stability,
}
TEST_NAMES = tuple(TESTS)   # the 11 tests, in the order they run and are reported

__all__ = ["SanityConfig", "SanityReport", "TestResult", "run_sanity"]


def run_sanity(candidate, settings: SanityConfig = SanityConfig(), *, reference: str | None = None,
               progress=None, labels: dict[str, str] | None = None,
               step: Callable[[str], None] | None = None) -> SanityReport:
    """Run the 11 tests on `candidate` (a torch.nn.Module: transformers' interface, or a port with names of its
    own and `parity_taps`, sanity/names.py)."""
    import torch

    torch.manual_seed(settings.seed)
    check_memory(candidate, settings)   # before the inputs are made
    if step is not None:
        step("building the reference")     # transformers' import and model: a step of its own
    try:
        with guarded():
            pair = build_pair(candidate, settings, reference)
    except BaseException as error:   # the candidate's .config, .to() or parameters are its code too
        if not is_user_exit(error):
            raise
        from parity.capture.torch.factory import describe_error

        raise OptionError(f"preparing the candidate failed: {describe_error(error)}; check its .config and "
                          "parameters") from None
    results = []
    for name, test in TESTS.items():
        if progress is not None:
            progress.step(f"sanity: {name}")
        if step is not None:
            step(f"the {name} test")
        results.append(_run_one(name, test, pair))
    return SanityReport(results=tuple(results), timestamp=datetime.datetime.now().isoformat(),
                        environment=_environment(settings), test_config=_test_config(pair, labels or {}))


def _run_one(name: str, test: Callable[[Pair], TestResult], pair: Pair) -> TestResult:
    from parity.capture.torch.factory import describe_error

    try:
        with guarded():
            return test(pair)
    except ParityError as error:
        return TestResult(name, SKIPPED, f"not checked: {error}")
    except UnusableOutput as error:
        return TestResult(name, FAILED, str(error))
    except BaseException as error:  # the candidate's code failed (SystemExit, os._exit too): this test's finding
        if not is_user_exit(error):
            raise
        said = describe_error(error)
        return TestResult(name, FAILED, said if isinstance(error, ExitCalled) else f"raised {said}")


def _environment(settings: SanityConfig) -> dict:
    import torch

    try:
        import transformers
        transformers_version = transformers.__version__
    except ImportError:
        transformers_version = None
    return {"device": settings.device, "pytorch_version": torch.__version__,
            "transformers_version": transformers_version, "cuda_available": torch.cuda.is_available(),
            "python_version": platform.python_version()}


def _test_config(pair: Pair, labels: dict[str, str]) -> dict:
    config, settings = pair.config, pair.settings
    fields = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "rope_theta")
    tolerance = settings.tolerance
    theta = (getattr(config, "rope_parameters", None) or {}).get("rope_theta")
    return {**labels, "batch_size": settings.batch_size, "seq_length": settings.seq_length,
            **{name: getattr(config, name) for name in fields if getattr(config, name, None) is not None},
            **({"rope_theta": theta} if theta else {}), "dtype": settings.dtype, "rtol": tolerance.rtol, "atol": tolerance.atol, "seed": settings.seed,
            "strict": settings.strict, "own_names": bool(pair.names)}
