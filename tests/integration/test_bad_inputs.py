"""Every bad value of every option, every unwritable output and every server fault: exit 2 and one line.

Each case runs the real CLI in a subprocess and asserts: exit code 2, exactly one
stderr line starting "parity: error:" (the last one), no traceback, the text that
says what is wrong, and advice on how to fix it. Outputs are checked before the
long work starts, so most cases end in well under a second.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from limited_run import MEASURED_CLI

pytest.importorskip("transformers")

from conftest import TOKENS  # noqa: E402

ADVICE = ("give", "choose", "pass", "fix", "check", "name", "drop", "ask", "write", "allow", "copy", "see ", "is it",
          "does the server", "make", "use")


def run(*args, cwd, preexec_fn=None, wrap=()):
    """The CLI in a subprocess: its exit code, stdout, stderr, wall time and peak resident memory (MiB)."""
    import tempfile
    import threading

    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr, \
            tempfile.NamedTemporaryFile("r") as peak:
        started = time.monotonic()
        process = subprocess.Popen([*wrap, sys.executable, "-c", MEASURED_CLI, *map(str, args)], cwd=cwd,
                                   stdout=stdout, stderr=stderr, preexec_fn=preexec_fn,
                                   env={**os.environ, "OMP_NUM_THREADS": "1", "PARITY_TEST_PEAK": peak.name})
        watchdog = threading.Timer(120, process.kill)
        watchdog.start()
        try:
            _, status = os.waitpid(process.pid, 0)
        finally:
            watchdog.cancel()
        process.returncode = os.waitstatus_to_exitcode(status)
        elapsed_s = time.monotonic() - started
        stdout.seek(0), stderr.seek(0)
        peak_kib = peak.read().strip()
        return (process.returncode, stdout.read(), stderr.read(), elapsed_s,
                int(peak_kib) / 1024 if peak_kib else float("inf"))


def assert_one_line_error(returncode, stderr, says):
    assert returncode == 2, stderr
    assert "Traceback" not in stderr and "Warning" not in stderr, stderr
    lines = stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("parity: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], stderr
    assert says in errors[0], errors[0]
    assert any(advice in errors[0] for advice in ADVICE), f"no advice on how to fix it: {errors[0]}"
    return errors[0]


# --- the files the cases use ---------------------------------------------------------


@pytest.fixture(scope="module")
def work(model_dirs, tmp_path_factory):
    """A directory holding a tiny model, damaged copies of it, a trace, reports and bad files."""
    from parity.capture.hf.model import capture_hf
    from parity.core.trace import save_trace

    root = tmp_path_factory.mktemp("bad_inputs")
    model = root / "model"
    shutil.copytree(model_dirs["llama"], model)
    save_trace(capture_hf(model, tokens=TOKENS), root / "trace.safetensors")

    truncated = root / "truncated_model"
    shutil.copytree(model, truncated)
    os.truncate(truncated / "model.safetensors", (truncated / "model.safetensors").stat().st_size // 2)
    wrong_config = root / "wrong_config_model"
    shutil.copytree(model, wrong_config)
    config = json.loads((wrong_config / "config.json").read_text())
    (wrong_config / "config.json").write_text(json.dumps({**config, "num_hidden_layers": "three"}))
    broken_config = root / "broken_config_model"
    shutil.copytree(model, broken_config)
    (broken_config / "config.json").write_text('{"model_type": "llama", ')

    (root / "a_directory").mkdir()
    (root / "not_empty").mkdir()
    (root / "not_empty" / "x").write_text("x")
    (root / "a_file").write_text("hello\n")
    (root / "binary").write_bytes(b"\xff\xfe\x00\x81binary")
    (root / "builds_nothing.py").write_text("def build():\n    return 5\n")
    report = {"schema": "parity-report/1", "checkpoints": [{"name": "layers.0.attn_norm"}],
              "origin": {"checkpoint": "layers.0.attn_norm"}, "reference": {"source": str(root / "trace.safetensors")}}
    for name, document in {
        "report_name_int": {**report, "checkpoints": [{"name": 5}]},
        "report_origin_list": {**report, "origin": {"checkpoint": ["layers.0.attn_norm"]}},
        "report_source_int": {**report, "reference": {"source": 5}},
        "report_tolerance_str": {**report, "checkpoints": [{"name": "layers.0.attn_norm", "tolerance": "big"}]},
        "report_reference_list": {**report, "reference": ["x"]},
    }.items():
        (root / f"{name}.json").write_text(json.dumps(document))
    return root


# --- one case per bad input: (arguments, what the error line says) ------------------------

CASES = {
    # outputs: checked at parse time
    "json_empty": ("compare {trace} {trace} --json ''", "the --json path is empty"),
    "json_directory": ("compare {trace} {trace} --json {dir}", "is a directory; give a file name for the --json"),
    "json_directory_force": ("compare {trace} {trace} --json {dir} --force", "is a directory"),
    "json_under_a_file": ("compare {trace} {trace} --json {file}/r.json", "a_file is not a directory"),
    "json_exists": ("compare {trace} {trace} --json {file}", "exists; choose another --json path or pass --force"),
    "json_in_proc": ("compare {trace} {trace} --json /proc/r.json", "/proc is not writable"),
    "check_json_empty": ("check {model} {trace} --tokens 1,2 --json ''", "the --json path is empty"),
    "generate_json_directory": ("generate {model} {model} --tokens 1,2 --json {dir}", "is a directory"),
    "tokens_json_under_a_file": ("tokens {model} --candidate-ids 1 --prompt w1 --json {file}/x.json", "is not a directory"),
    "capture_output_directory": ("capture {model} --tokens 1,2 -o {dir}", "is a directory; give a file name"),
    "capture_output_directory_force": ("capture {model} --tokens 1,2 -o {dir} --force", "is a directory"),
    "capture_output_under_a_file": ("capture {model} --tokens 1,2 -o {file}/t.safetensors", "is not a directory"),
    "capture_output_not_safetensors": ("capture {model} --tokens 1,2 -o t.npz", "traces are written as .safetensors"),
    "capture_output_exists": ("capture {model} --tokens 1,2 -o {trace}", "exists; choose another -o path or pass --force"),
    "save_traces_a_file": ("check {model} {trace} --tokens 1,2 --save-traces {file}", "exists and is not a directory"),
    "save_traces_empty": ("check {model} {trace} --tokens 1,2 --save-traces ''", "--save-traces is empty"),
    # an output over an input of the run: refused even with --force
    "junit_over_the_reference": ("compare {trace} {trace} --junit {trace} --force",
                                 "which this run reads (reference); give another path (--force never replaces"),
    "json_over_the_candidate": ("check {model} {trace} --tokens 1,2 --json {trace} --force",
                                "which this run reads (candidate)"),
    "offload_dir_a_file": ("check {model} {trace} --tokens 1,2 --offload-dir {file}",
                           "is a file, not a directory"),
    "repro_output_a_file": ("repro {work}/report_name_int.json -o {file}", "exists and is not a directory"),
    "repro_output_not_empty": ("repro {work}/report_name_int.json -o {work}/not_empty", "exists and is not empty"),
    # numbers out of range
    "top_p_2": ("generate {model} {model} --tokens 1,2 --top-p 2", "argument --top-p: must be a number in (0, 1]"),
    "top_p_0": ("generate {model} {model} --tokens 1,2 --top-p 0", "argument --top-p: must be a number in (0, 1]"),
    "top_k_negative": ("generate {model} {model} --tokens 1,2 --top-k -3", "argument --top-k: must be 1 or more, got -3"),
    "top_k_0": ("generate {model} {model} --tokens 1,2 --top-k 0", "argument --top-k: must be 1 or more"),
    "generate_n_0": ("generate {model} {model} --tokens 1,2 -n 0", "argument -n/--max-tokens: must be 1 or more"),
    "check_n_negative": ("check {model} http://127.0.0.1:1 --prompt w1 -n -3", "must be 1 or more, got -3"),
    "temperature_0": ("generate {model} {model} --tokens 1,2 --temperature 0", "argument --temperature: must be a positive"),
    "temperature_nan": ("generate {model} {model} --tokens 1,2 --temperature nan", "must be a finite number"),
    "timeout_0": ("check {model} http://127.0.0.1:1 --prompt w1 --timeout 0", "argument --timeout: must be a positive"),
    "timeout_negative": ("check {model} http://127.0.0.1:1 --prompt w1 --timeout=-1", "must be a positive number of seconds"),
    "timeout_inf": ("check {model} http://127.0.0.1:1 --prompt w1 --timeout inf", "must be a finite number"),
    "system_on_completions": ("check {model} http://127.0.0.1:1 --prompt w1 --system w2",
                              "--system is sent as a chat message; http://127.0.0.1:1 is a completions endpoint: give "
                              "its /v1/chat/completions address"),
    "system_on_a_trace": ("check {model} {trace} --tokens 1,2 --system w2",
                          "--system is a chat endpoint's system message; give the server's"),
    "decode_steps_negative": ("check {model} {trace} --tokens 1,2 --decode-steps=-1", "must be 0 or more"),
    "atol_negative": ("compare {trace} {trace} --atol=-1 --rtol 0", "argument --atol: must be 0 or more"),
    "rtol_not_a_number": ("compare {trace} {trace} --atol 0 --rtol x", "argument --rtol: must be a number, got 'x'"),
    "checkpoints_empty": ("compare {trace} {trace} --checkpoints ''", "argument --checkpoints: is empty"),
    "checkpoints_no_name": ("compare {trace} {trace} --checkpoints zzz", "'zzz' matches no checkpoint name"),
    "checkpoints_select_none": ("compare {trace} {trace} --checkpoints layers.200.q", "selects none of the"),
    "taps_unknown": ("check {model} {trace} --tokens 1,2 --taps bogus", "no built-in mapping named 'bogus'"),
    "sampler_no_file": ("generate {model} {model} --tokens 1,2 --sampler nope.py:sample", "nope.py: no such file"),
    "sampler_no_function": ("generate {model} {model} --tokens 1,2 --sampler sampler", "is not FILE.py:FUNCTION"),
    "emulate_without_gguf": ("capture {model} --tokens 1,2 --emulate llamacpp -o t.safetensors",
                             "--emulate llamacpp needs MODEL to be the .gguf file"),
    # token ids
    "tokens_negative": ("capture {model} --tokens=-1,2 -o t.safetensors", "--tokens holds the negative id -1"),
    "tokens_not_integers": ("capture {model} --tokens 1,x -o t.safetensors", "'x' is not an integer"),
    "tokens_beyond_vocabulary": ("capture {model} --tokens 5,200,7 -o t.safetensors",
                                 "token id 200 is outside the vocabulary of"),
    "ids_negative": ("tokens {model} --candidate-ids=-4,2 --prompt w1", "--candidate-ids holds the negative id -4"),
    "ids_empty": ("tokens {model} --candidate-ids '' --prompt w1", "--candidate-ids is empty"),
    "ids_beyond_vocabulary": ("tokens {model} --candidate-ids 5,9999 --prompt w1", "the id 9999, outside the reference's "
                                                                         "vocabulary (ids 0 to 95)"),
    "ids_binary_file": ("tokens {model} --candidate-ids @{work}/binary --prompt w1", "is not UTF-8 text (byte 0 is 0xff)"),
    "ids_directory": ("tokens {model} --candidate-ids @{dir} --prompt w1", "is a directory; give a file as --candidate-ids @FILE"),
    "tokens_file_directory": ("tokens {model} --candidate-ids 1 --file {dir}", "is a directory; give a file as --file"),
    "tokens_file_not_utf8": ("tokens {model} --candidate-ids 1 --file {work}/binary", "is not UTF-8 text"),
    "tokens_file_device": ("tokens {model} --candidate-ids 1 --file /dev/zero", "is not a regular file"),
    # reports given to repro
    "repro_report_directory": ("repro {dir} -o out", "is a directory; give a file as the report"),
    "repro_report_binary": ("repro {work}/binary -o out", "is not UTF-8 text"),
    "repro_report_name_int": ("repro {work}/report_name_int.json -o out", "checkpoints[0] is dict, not an object "
                                                                         "with a string 'name'"),
    "repro_report_origin_list": ("repro {work}/report_origin_list.json -o out", "'origin.checkpoint' is list, not a string"),
    "repro_report_source_int": ("repro {work}/report_source_int.json -o out", "'reference.source' is 5, not a string"),
    "repro_report_reference_list": ("repro {work}/report_reference_list.json -o out", "'reference' is list, not an object"),
    "repro_report_tolerance_str": ("repro {work}/report_tolerance_str.json -o out",
                                   "'tolerance' is \"big\", not a JSON object"),
    # damaged model directories
    "model_truncated_weights": ("capture {work}/truncated_model --tokens 1,2 -o t.safetensors",
                                "model.safetensors: transformers could not load the weights"),
    "model_config_wrong_type": ("capture {work}/wrong_config_model --tokens 1,2 -o t.safetensors",
                                "config.json: transformers could not read the model's configuration"),
    "model_config_not_json": ("capture {work}/broken_config_model --tokens 1,2 -o t.safetensors",
                              "config.json is not valid JSON"),
}


def _arguments(template: str, work) -> list[str]:
    import shlex

    paths = {"trace": work / "trace.safetensors", "model": work / "model", "dir": work / "a_directory",
             "file": work / "a_file", "work": work}
    return shlex.split(template.format(**{key: shlex.quote(str(value)) for key, value in paths.items()}))


# These load a model or a tokenizer before they can fail (a few seconds each on 2 cores).
LOADING = {"tokens_beyond_vocabulary", "ids_beyond_vocabulary", "model_truncated_weights", "model_config_wrong_type",
           "model_config_not_json"}


@pytest.mark.parametrize("case", [pytest.param(case, marks=pytest.mark.slow) if case in LOADING else case
                                  for case in sorted(CASES)])
def test_a_bad_input_is_one_line_and_exit_2(work, tmp_path, case):
    template, says = CASES[case]
    returncode, _, stderr, _, _ = run(*_arguments(template, work), cwd=tmp_path)
    assert_one_line_error(returncode, stderr, says)
    assert list(tmp_path.iterdir()) == []   # nothing written, not even a temporary file


def test_overflowing_values_are_results_not_warnings(work, tmp_path):
    """A candidate at float32's edge overflows numpy's arithmetic: a divergence (exit 1), with no
    RuntimeWarning printed."""
    from parity.core.trace import load_trace, make_trace, save_trace

    reference = load_trace(work / "trace.safetensors")
    huge = {name: np.full_like(tensor, 3e38) for name, tensor in reference.tensors.items()}
    save_trace(make_trace(huge, reference.metadata), tmp_path / "huge.safetensors")
    returncode, stdout, stderr, _, _ = run("compare", work / "trace.safetensors", tmp_path / "huge.safetensors",
                                           cwd=tmp_path)
    assert returncode == 1, stderr
    assert "Warning" not in stderr and "FAIL" in stdout


# --- a misbehaving server on loopback, through the CLI --------------------------------------

SERVER_FAULTS = {
    "drip": "did not finish answering within 3 s",
    "silent": "did not finish answering within 3 s",
    "endless": "sent more than 33,554,432 bytes",
    "huge_length": "announced a 1,000,000,000,000-byte answer",
    "bad_status": "bad HTTP status line",
    "many_headers": "got more than 100 headers",
    "deep_json": "JSON nested too deeply",
    "text_int": "choices[0].text = 5, expected a string",
    "logprobs_str": "token_logprobs[1] = 'high', expected a log-probability",
    "offsets_float": "text_offset[1] = 2.5",
    "truncated": "closed the connection after 117 bytes",
    "reset": "Connection reset by peer",
    "not_json": "not JSON",
    "http_500": "answered HTTP 500",
    "redirect": "a redirect to 'http://example.com/v1/completions'",
    # answers that once passed: nothing to compare (each shape: tests/capture/server)
    "echo_only": "(not comparable): 0 tokens",
    "no_top_logprobs": "(not comparable): top_logprobs[1] is null",
    "one_token": "(not comparable): 1 token",
    "offsets_misaligned": "(not comparable): token 1 (' w2') starts at offset 1",
    "surrogate_text": "lone surrogate escape \\ud800",
}


@pytest.fixture(scope="module")
def misbehaving():
    from misbehaving_server import MisbehavingServer

    server = MisbehavingServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def start_up_s(work, misbehaving, tmp_path_factory):
    """How long the CLI takes to start and fail on a server that hangs up at once (the baseline)."""
    from misbehaving_server import PROMPT

    timings = [run("check", work / "model", misbehaving.url("close_at_once"), "--prompt", PROMPT,
                   cwd=tmp_path_factory.mktemp("baseline"))[3] for _ in range(2)]
    return max(timings)


@pytest.mark.parametrize("scenario", sorted(SERVER_FAULTS))
def test_a_misbehaving_server_is_one_line_in_bounded_time_and_memory(work, tmp_path, misbehaving, start_up_s,
                                                                     scenario):
    from misbehaving_server import PROMPT

    url = misbehaving.url(scenario)
    returncode, _, stderr, elapsed_s, peak_mib = run("check", work / "model", url, "--prompt", PROMPT, "--timeout", "3",
                                                     cwd=tmp_path)
    line = assert_one_line_error(returncode, stderr, SERVER_FAULTS[scenario])
    assert f"the server at {url}/v1/completions" in line
    assert elapsed_s < start_up_s + 3 + 3   # the 3 s total deadline over the CLI's own start-up, with slack for a busy machine
    assert peak_mib < 300   # the answer is capped at 32 MiB, whatever the server sends (measured: 95 MiB at most)


def test_a_comparable_server_answer_is_compared_and_reported(work, tmp_path, misbehaving):
    """The stub's well-formed answer reaches the report (it once failed there, naming a renderer module that
    had been renamed): a result, exit 0 or 1, nothing on stderr but progress."""
    from misbehaving_server import PROMPT

    returncode, stdout, stderr, _, _ = run("check", work / "model", misbehaving.url("good"), "--prompt", PROMPT,
                                           "--timeout", "3", cwd=tmp_path)
    assert returncode in (0, 1) and "Traceback" not in stderr, stderr
    assert "w4" in stdout


def test_a_server_whose_tokens_match_none_of_the_references_is_not_comparable(work, tmp_path, misbehaving):
    from misbehaving_server import PROMPT

    returncode, _, stderr, _, _ = run("check", work / "model", misbehaving.url("pieces_unmatched"), "--prompt", PROMPT,
                                      "--timeout", "3", cwd=tmp_path)
    assert_one_line_error(returncode, stderr, "cannot be compared (not comparable): none of its 3 tokens")


# --- outputs that cannot be written, for real -------------------------------------------------


def _without_root_privileges():
    """For a subprocess: drop the capabilities that let root ignore file modes (DAC override and
    read-search, fowner), so a read-only directory stops it as it stops any user. A non-root user
    needs nothing dropped."""
    if os.geteuid() != 0:
        return None
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    pr_capbset_drop, capabilities = 24, (1, 2, 3)   # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER

    def drop() -> None:
        for capability in capabilities:
            if libc.prctl(pr_capbset_drop, capability, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")

    return drop


@pytest.fixture
def read_only_directory(tmp_path):
    directory = tmp_path / "read_only"
    directory.mkdir()
    directory.chmod(0o555)
    probe = subprocess.run([sys.executable, "-c", f"open({str(directory / 'probe')!r}, 'w')"],
                           preexec_fn=_without_root_privileges(), capture_output=True)
    if probe.returncode == 0:
        pytest.skip("this process can write into a mode-555 directory even with its privileges dropped")
    yield directory
    directory.chmod(0o755)


@pytest.mark.parametrize("command", ["compare_json", "capture", "repro", "save_traces"])
def test_a_read_only_directory_is_one_line(work, read_only_directory, command):
    arguments = {
        "compare_json": ["compare", work / "trace.safetensors", work / "trace.safetensors",
                         "--json", read_only_directory / "r.json"],
        "capture": ["capture", work / "model", "--tokens", "1,2", "-o", read_only_directory / "t.safetensors"],
        "repro": ["repro", work / "report_source_int.json", "-o", read_only_directory / "repro"],
        "save_traces": ["check", work / "model", work / "trace.safetensors", "--tokens", "1,2",
                        "--save-traces", read_only_directory / "traces"],
    }[command]
    returncode, _, stderr, _, _ = run(*arguments, cwd=work, preexec_fn=_without_root_privileges())
    assert_one_line_error(returncode, stderr, "is not writable (Permission denied)")
    assert list(read_only_directory.iterdir()) == []


def _in_own_mount(tmp_path, options: str):
    """A command prefix that runs the CLI in a private mount namespace with a tmpfs (`options`) on
    tmp_path/mnt; skips where mounting is not allowed (not root, or a container without CAP_SYS_ADMIN)."""
    mount_point = tmp_path / "mnt"
    mount_point.mkdir()
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare is not installed")
    probe = subprocess.run([unshare, "-m", "sh", "-c", f"mount -t tmpfs -o {options} tmpfs {mount_point}"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {probe.stderr.strip()}")
    script = f'mount -t tmpfs -o {options} tmpfs "{mount_point}" && exec "$@"'
    return mount_point, (unshare, "-m", "sh", "-c", script, "sh")


def test_a_read_only_filesystem_is_one_line(work, tmp_path):
    mount_point, wrap = _in_own_mount(tmp_path, "ro,size=1m")
    returncode, _, stderr, _, _ = run("compare", work / "trace.safetensors", work / "trace.safetensors",
                                      "--json", mount_point / "sub" / "r.json", cwd=work, wrap=wrap)
    assert_one_line_error(returncode, stderr, "is not writable (Read-only file system)")


@pytest.mark.slow
def test_a_full_disk_at_the_real_write_is_one_line_and_leaves_nothing(work, tmp_path):
    """The parse-time probe passes (an empty file fits); the trace does not: ENOSPC comes from the
    real write, after the capture, and is one line too, with the temporary file removed."""
    mount_point, wrap = _in_own_mount(tmp_path, "size=64k")
    script = ('import subprocess, sys, os; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); '
              f'sys.stderr.write(r.stderr); print(os.listdir({str(mount_point)!r})); sys.exit(r.returncode)')
    process = subprocess.run([*wrap, sys.executable, "-c", script, sys.executable, "-m", "parity", "capture",
                              work / "model", "--tokens", ",".join(map(str, TOKENS)),
                              "-o", mount_point / "t.safetensors"],
                             cwd=work, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                             timeout=120)
    assert_one_line_error(process.returncode, process.stderr, "No space left on device")
    assert process.stdout.strip() == "[]"   # neither the trace nor a temporary file is left


def test_real_write_faults_after_the_checks_are_one_line(tmp_path):
    """EISDIR and ENOTDIR from the write itself (the path changed after it was checked)."""
    from parity.core.errors import OutputError
    from parity.core.files import atomic_file

    (tmp_path / "became_a_directory").mkdir()
    (tmp_path / "a_file").write_text("x")
    for path, says in ((tmp_path / "became_a_directory", "Is a directory"),
                       (tmp_path / "a_file" / "out.json", "a_file is not a directory")):
        with pytest.raises(OutputError, match=says) as raised:
            with atomic_file(path) as file:
                file.write(b"{}")
        assert "\n" not in str(raised.value) and "choose another" in str(raised.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "became_a_directory"]


_WRITE_PAST_THE_CHECKS = """
import sys
from pathlib import Path
from parity.core.errors import OutputError
from parity.core.files import atomic_file
try:
    with atomic_file(Path(sys.argv[1])) as file:
        file.write(b"{}")
except OutputError as error:
    print(error)
"""


def test_read_only_and_permission_faults_from_the_write_itself_are_one_line(tmp_path, read_only_directory):
    """EROFS and EACCES raised by the write (as when a path turns read-only after the checks)."""
    mount_point, wrap = _in_own_mount(tmp_path, "ro,size=1m")
    for prefix, target, preexec_fn, says in (
            (wrap, mount_point / "r.json", None, "Read-only file system"),
            ((), read_only_directory / "r.json", _without_root_privileges(), "Permission denied")):
        written = subprocess.run([*prefix, sys.executable, "-c", _WRITE_PAST_THE_CHECKS, str(target)],
                                 capture_output=True, text=True, preexec_fn=preexec_fn, timeout=60)
        assert written.returncode == 0 and "Traceback" not in written.stderr, written.stderr
        assert says in written.stdout and written.stdout.count("\n") == 1, written.stdout
