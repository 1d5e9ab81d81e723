"""The result model: what every check found, as frozen dataclasses, one module per check.

Reports (parity.report) read these and never compute. `bool(result)` means
passed; `repr(result)` is one line. A tolerance explains a checkpoint's error
against itself (`Tolerance.explain`): the one mismatch message every report uses.
"""

from parity.core.results.bench import BenchReport
from parity.core.results.comparison import (FAIL, NOT_COMPARABLE, PASS, Attribution, CheckpointResult, Comparison,
                                            Divergence)
from parity.core.results.decode import CacheComparison, DecodeConsistency
from parity.core.results.findings import CHECKS, NOT_ASKED, Diagnosis, NotChecked
from parity.core.results.generation import GenerationComparison, GreedyDivergence, SamplerCheck, TeacherForced
from parity.core.results.gradients import GradientComparison, GradientResult
from parity.core.results.kernel import CaseResult, KernelReport
from parity.core.results.sanity import SanityReport, TestResult
from parity.core.results.sequence import NEAR_TIE_NATS, PositionResult, SequenceComparison
from parity.core.results.tokenizer import TextTokens, TokenDifference, TokenizerComparison
from parity.core.results.tolerance import Metrics, NoiseFloor, Tolerance, one_line

__all__ = [
    "Attribution", "BenchReport", "CHECKS", "CacheComparison", "CaseResult", "CheckpointResult", "Comparison",
    "DecodeConsistency", "Diagnosis", "Divergence", "FAIL", "GenerationComparison", "GradientComparison",
    "GradientResult", "GreedyDivergence", "KernelReport", "Metrics", "NEAR_TIE_NATS", "NOT_ASKED", "NOT_COMPARABLE",
    "NoiseFloor", "NotChecked", "PASS", "PositionResult", "SamplerCheck", "SanityReport", "SequenceComparison",
    "TeacherForced", "TestResult", "TextTokens", "TokenDifference", "TokenizerComparison", "Tolerance", "one_line",
]
