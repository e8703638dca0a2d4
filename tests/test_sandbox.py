"""The sandbox contains hostile programs and leaves the host as it was.

Each test checks behaviour (the run is not ok, the outside world is unchanged), not which layer
stopped the program: on another machine a different layer may be the one that acts.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from barkit.sandbox import WORKDIR_PREFIX, run_python

# A marker no other process carries: any process that escaped would show it in /proc.
ESCAPE_MARKER = "7.31415"


def _processes_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            found.append(int(entry.name))
    return found


def _sandbox_dirs() -> set[str]:
    import tempfile

    return {p.name for p in Path(tempfile.gettempdir()).glob(WORKDIR_PREFIX + "*")}


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The sandbox's temp root for one test: other processes' sandboxes (a code RLVR stage running
    beside the tests) create their folders in the shared temp dir, not here."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def test_normal_program_runs_and_returns_output(private_tmp: Path):
    before = _sandbox_dirs()
    result = run_python("import json\nprint(json.dumps({'sum': sum(range(5))}))", timeout_s=3)
    assert result.ok, result.reason
    assert result.stdout.strip() == '{"sum": 10}'
    assert result.returncode == 0 and not result.timed_out and result.reason == ""
    assert _sandbox_dirs() <= before  # its working folder is gone


def test_program_error_is_reported_not_raised():
    result = run_python("raise ValueError('bad input 42')", timeout_s=3)
    assert not result.ok
    assert result.returncode == 1
    assert "ValueError: bad input 42" in result.reason


def test_infinite_loop_is_stopped_by_the_timeout():
    start = time.monotonic()
    result = run_python("while True:\n    pass", timeout_s=1.0)
    assert not result.ok
    assert result.timed_out or result.reason.startswith("CPU time")
    assert time.monotonic() - start < 3.0


def test_memory_bomb_is_contained():
    code = "chunks = []\nwhile True:\n    chunks.append(bytearray(16 * 1024 * 1024))"
    result = run_python(code, timeout_s=3, memory_mb=128)
    assert not result.ok
    assert not result.timed_out  # the memory limit acts long before the clock
    assert "MemoryError" in result.reason or result.returncode < 0


def test_fork_bomb_is_contained_and_leaves_no_process():
    bomb = "import os\nwhile True:\n    os.fork()"
    result = run_python(bomb, timeout_s=2)
    assert not result.ok
    # every way of starting a process, each turned into a long sleep if it gets through
    attempts = f"""
import os
started = []
for attempt in (
    lambda: os.fork() == 0 and os.execv("/bin/sleep", ["sleep", "{ESCAPE_MARKER}"]),
    lambda: os.system("sleep {ESCAPE_MARKER} &"),
    lambda: os.posix_spawn("/bin/sleep", ["sleep", "{ESCAPE_MARKER}"], {{}}),
    lambda: __import__("subprocess").Popen(["sleep", "{ESCAPE_MARKER}"]),
    lambda: __import__("pty").fork(),
):
    try:
        attempt()
        started.append(True)
    except Exception as e:
        print(type(e).__name__)
print("started", len(started))
"""
    result = run_python(attempts, timeout_s=3)
    assert "started 0" in result.stdout, result.stdout + result.stderr
    assert _processes_with("sleep " + ESCAPE_MARKER) == []


def test_write_outside_the_working_directory_is_refused(tmp_path: Path):
    outside = tmp_path / "outside.txt"
    renamed = tmp_path / "renamed.txt"
    keep = tmp_path / "keep.txt"
    keep.write_text("host data")
    for code in (
        f"open({str(outside)!r}, 'w').write('escaped')",
        f"import os\nos.close(os.open({str(outside)!r}, os.O_WRONLY | os.O_CREAT))",
        f"import os\nos.remove({str(keep)!r})",
        f"import os\nos.rename({str(keep)!r}, {str(renamed)!r})",
        f"import os\nos.symlink({str(keep)!r}, 'link')\nopen('link', 'w').write('escaped')",
        f"import os\nos.chdir({str(tmp_path)!r})\nopen('outside.txt', 'w').write('escaped')",
    ):
        result = run_python(code, timeout_s=3)
        assert not result.ok, code
    assert not outside.exists()
    assert not renamed.exists()
    assert keep.read_text() == "host data"


def test_writes_inside_the_working_directory_work():
    code = "open('notes.txt', 'w').write('inside')\nprint(open('notes.txt').read())"
    result = run_python(code, timeout_s=3)
    assert result.ok, result.reason
    assert result.stdout.strip() == "inside"


def test_socket_connection_is_refused():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.settimeout(0.2)
        port = server.getsockname()[1]
        for code in (
            f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)",
            f"import socket\ns = socket.socket()\ns.connect(('127.0.0.1', {port}))",
            f"import _socket\ns = _socket.socket()\ns.connect(('127.0.0.1', {port}))",
        ):
            result = run_python(code, timeout_s=3)
            assert not result.ok, code
        with pytest.raises(socket.timeout):
            server.accept()  # nothing ever reached the host's listener


def test_output_is_bounded_by_the_file_size_limit():
    result = run_python("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)", timeout_s=3, file_mb=1)
    assert not result.ok
    assert not result.timed_out
    assert len(result.stdout) <= 64_000


def test_environment_is_minimal(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("BARKIT_SECRET_FOR_TEST", "do-not-leak")
    result = run_python("import os\nprint(sorted(os.environ))", timeout_s=3)
    assert result.ok, result.reason
    assert "BARKIT_SECRET_FOR_TEST" not in result.stdout
    assert os.environ["BARKIT_SECRET_FOR_TEST"] == "do-not-leak"


def test_root_host_drops_to_an_unprivileged_user(monkeypatch: pytest.MonkeyPatch):
    """The kernel-side layer used where root runs an interpreter that ``nobody`` can read."""
    import shutil

    from barkit import sandbox

    system_python = shutil.which("python3", path="/usr/bin:/bin")
    if os.geteuid() != 0 or system_python is None:
        pytest.skip("needs a root host and a system /usr/bin/python3 to exercise the uid drop")
    monkeypatch.setattr(sandbox.sys, "executable", system_python)
    sandbox.unprivileged_ids.cache_clear()
    try:
        ids = sandbox.unprivileged_ids()
        if ids is None:
            pytest.skip(f"user nobody cannot run {system_python} here")
        result = run_python("import os\nprint(os.getuid())", timeout_s=3)
        assert result.ok and result.stdout.strip() == str(ids[0]), result.reason
        # files left unreadable by the child are still cleaned up
        before = _sandbox_dirs()
        assert run_python("open('x', 'w').write('x')\nimport os\nos.chmod('.', 0)", timeout_s=3).ok
        assert _sandbox_dirs() <= before
        assert not run_python("import os\nos.fork()", timeout_s=3).ok
    finally:
        sandbox.unprivileged_ids.cache_clear()
