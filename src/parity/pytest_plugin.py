"""The pytest plugin (entry point `pytest11: parity`): hooks and fixtures only; the logic is in parity.testing.

- `pytest --parity-report DIR` writes the HTML report of every failing
  `assert_parity` to DIR/<test id>.html (an existing report is replaced only
  with --parity-report-force, as every parity output).
- A failed `assert a == b` where a or b is a parity result shows its summary.
- The session fixture `parity_reference(model, tokens=... | prompt=...)` captures
  each reference once per session.
"""

from __future__ import annotations

import pytest

from parity import testing

_WRITTEN = pytest.StashKey[list]()


def pytest_addoption(parser) -> None:
    group = parser.getgroup("parity")
    group.addoption("--parity-report", metavar="DIR", default=None,
                    help="write the HTML report of every failing assert_parity to DIR")
    group.addoption("--parity-report-force", action="store_true", default=False,
                    help="replace reports already in DIR")


def pytest_configure(config) -> None:
    config.stash[_WRITTEN] = []
    directory = config.getoption("parity_report", default=None)
    if directory is not None:
        try:
            testing.check_report_directory(directory)
        except testing.OptionError as error:
            raise pytest.UsageError(str(error)) from None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    directory = item.config.getoption("parity_report", default=None)
    error = call.excinfo.value if call.excinfo is not None else None
    if directory is None or not isinstance(error, testing.ParityAssertionError):
        return
    message = testing.write_report(error.comparison, directory, item.nodeid,
                                   overwrite=item.config.getoption("parity_report_force"))
    item.config.stash[_WRITTEN].append(message)
    outcome.get_result().sections.append(("parity report", message))


def pytest_terminal_summary(terminalreporter, config) -> None:
    written = config.stash.get(_WRITTEN, [])
    if written:
        terminalreporter.section("parity reports")
        for line in written:
            terminalreporter.write_line(line)


def pytest_assertrepr_compare(config, op, left, right):
    return testing.explain_comparison(op, left, right)


@pytest.fixture(scope="session")
def parity_reference():
    """parity_reference(model, tokens=[...] or prompt="...", dtype="float32") -> Trace, captured once a session."""
    return testing.ReferenceCache()
