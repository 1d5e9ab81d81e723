from rich.table import Table
from rich.text import Text

from parity.report import terminal as output
from parity.report.progress import Progress


def test_text_from_files_reaches_the_terminal_without_control_characters_but_with_styles():
    table = Table()
    table.add_column("token")
    table.add_row("x\x1b[2Jy\ud800z")
    rendered = output.render([Text("producer \x1b]0;pwned\x07 \u202egnp.exe", style="bold"), table,
                              "line one\nline two\rover"], color=True)
    assert "\x1b[1m" in rendered  # rich's own bold is kept
    for hostile in ("\x1b[2J", "\x1b]0;", "\x07", "\ud800", "\u202e", "\r"):
        assert hostile not in rendered
    assert "line one\nline two" in rendered  # line breaks are layout, kept
    rendered.encode("utf-8")


def test_progress_lines_are_printable(capsys):
    import sys

    with Progress(stream=sys.stderr) as progress:
        progress.step("loading evil\x1b[2J\nmodel")
    err = capsys.readouterr().err
    assert "\x1b" not in err and len(err.splitlines()) == 1
