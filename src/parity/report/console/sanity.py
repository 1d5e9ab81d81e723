"""`parity sanity` on the console: one line, or with -v a table of every test. Plain text."""

from __future__ import annotations

from parity.core.results.sanity import PASSED, SKIPPED, SanityReport
from parity.report.registry import register

_MARK = {"passed": "✓", "failed": "✗", "skipped": "-"}


def line(report: SanityReport, output: str | None = None) -> str:
    """'All 11 tests passed - results in OUT', or what failed and what was not checked."""
    where = f" - results in {output}" if output else ""
    total = len(report.results)
    skipped = [result.name for result in report.results if result.status == SKIPPED]
    if report and not skipped:
        return f"All {total} tests passed{where}"
    if report:
        return (f"{total - len(skipped)}/{total} tests passed; {len(skipped)} not checked ({', '.join(skipped)}; "
                f"--strict fails them){where}")
    failed = [result.name for result in report.results if result.status not in (PASSED, SKIPPED)]
    parts = [f"{len(failed)}/{total} tests failed ({', '.join(failed)})"] if failed else []
    parts += [f"{len(skipped)} not checked ({', '.join(skipped)})"] if skipped else []
    return "; ".join(parts) + where


def table(report: SanityReport, output: str | None = None) -> str:
    """Every test with its status and message, then the environment and the one-line summary."""
    width = max(len(result.name) for result in report.results)
    environment = report.environment
    rows = [f"parity sanity: {report.test_config.get('candidate', 'candidate')} against "
            f"{report.test_config.get('reference', 'transformers')}",
            f"device {environment['device']}, torch {environment['pytorch_version']}, "
            f"transformers {environment['transformers_version']}, {report.test_config['dtype']}, "
            f"batch {report.test_config['batch_size']} x {report.test_config['seq_length']} tokens, "
            f"rtol {report.test_config['rtol']:g} atol {report.test_config['atol']:g}", ""]
    for result in report.results:
        rows.append(f"{_MARK.get(result.status, '?')} {result.name:<{width}}  {result.status:<7}  {result.message}")
    summary = report.summary
    rows += ["", f"{summary['passed']}/{summary['total_tests']} passed ({summary['success_rate']}), "
                 f"{summary['failed']} failed, {summary['skipped']} not checked: {summary['overall_status']}",
             line(report, output)]
    return "\n".join(rows)


@register(SanityReport, "console")
def render(report: SanityReport, *, verbose: bool = False, output: str | None = None, **_layout) -> str:
    """The line, or with `verbose` the table; `output` names where the JSON went. Not laid out to a width."""
    return (table(report, output) if verbose else line(report, output)) + "\n"
