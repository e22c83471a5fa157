"""The code sandbox against hostile programs: the harness survives, scores them failed, and the
machine is left as it was.

Each OS-level layer (network namespace, privilege drop) is also tested with the Python-level guard
switched off, so a test passes because of the layer it names; those variants skip where the layer
is unavailable (non-root without user namespaces) instead of risking the test process.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest

from harness.evaluation.sandbox import ExecResult, SandboxLimits, run_many, run_program, sandbox_capabilities

GUARD_OFF = SandboxLimits(python_guard=False)


@pytest.fixture(scope="module")
def caps() -> dict:
    report = sandbox_capabilities()
    assert report["status"] == "passed", report
    return report


def _needs(caps: dict, *layers: str) -> None:
    missing = [layer for layer in layers if not caps.get(layer)]
    if missing:
        pytest.skip(f"sandbox layer(s) {missing} unavailable here: {caps.get('notes')}")


def _sandbox_processes() -> list[int]:
    """Processes still running the sandbox launcher (their command line names it)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as fh:
                cmd = fh.read()
            with open(f"/proc/{name}/stat", "rb") as fh:
                state = fh.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if b"_sandbox_child.py" in cmd and state not in (b"Z", b"X"):
            found.append(int(name))
    return found


def _live_process_count() -> int:
    count = 0
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as fh:
                    if fh.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X"):
                        count += 1
            except OSError:
                continue
    return count


def _assert_failed(result: ExecResult, *statuses: str) -> None:
    assert not result.passed, result
    assert result.status in (statuses or ("failed",)), result


# ---------------------------------------------------------------- ordinary behaviour


def test_passing_and_failing_programs() -> None:
    ok = run_program("print('hello')", timeout_s=10)
    assert ok.passed and ok.status == "passed" and ok.stdout_tail == "hello\n" and ok.returncode == 0
    bad = run_program("assert 1 == 2, 'nope'", timeout_s=10)
    _assert_failed(bad)
    assert "AssertionError: nope" in bad.stderr_tail and "<program>" in bad.stderr_tail
    _assert_failed(run_program("def f(:\n  pass", timeout_s=10))  # syntax error
    _assert_failed(run_program("import sys\nsys.exit(3)", timeout_s=10))
    assert run_program("import sys\nsys.exit(0)", timeout_s=10).passed


def test_stdlib_imports_work_inside(caps: dict) -> None:
    result = run_program("import math, hashlib, collections, itertools, random, re, heapq, fractions\n"
                         "print(math.factorial(5), hashlib.md5(b'x').hexdigest()[:4])", timeout_s=10)
    assert result.passed, result
    assert result.stdout_tail.split() == ["120", "9dd4"]


def test_environment_is_scrubbed(monkeypatch) -> None:
    monkeypatch.setenv("DISTILL_SECRET_TOKEN", "hunter2")
    result = run_program("import os\nprint(sorted(os.environ))", timeout_s=10)
    assert result.passed
    assert "DISTILL_SECRET_TOKEN" not in result.stdout_tail and "hunter2" not in result.stdout_tail


def test_required_layer_missing_is_an_error() -> None:
    result = run_program("print('x')", timeout_s=10, limits=SandboxLimits(required=("no_such_layer",)))
    assert result.status == "error" and not result.passed
    assert "required confinement unavailable" in result.stderr_tail


def test_workdir_is_fresh_and_removed() -> None:
    result = run_program("import os\nprint(os.getcwd())\nprint(os.listdir('.'))\nopen('junk.txt', 'w').write('x')",
                         timeout_s=10)
    assert result.passed, result
    cwd = result.stdout_tail.splitlines()[0]
    assert not Path(cwd).exists()


def test_run_many_keeps_order_and_runs_in_parallel() -> None:
    programs = [f"import time\ntime.sleep(0.3)\nprint({i})" for i in range(4)]
    start = time.monotonic()
    results = run_many(programs, workers=4, timeout_s=10)
    elapsed = time.monotonic() - start
    assert [r.stdout_tail.strip() for r in results] == ["0", "1", "2", "3"]
    assert all(r.passed for r in results)
    assert elapsed < 4 * 0.3 + 0.5  # overlapped, not sequential
    assert run_many([], workers=2) == []


# ---------------------------------------------------------------- hostile programs


def test_infinite_loop_times_out() -> None:
    start = time.monotonic()
    result = run_program("while True:\n    pass", timeout_s=1.0)
    _assert_failed(result, "timeout")
    assert time.monotonic() - start < 5
    assert _sandbox_processes() == []


def test_cpu_limit_kills(caps: dict) -> None:
    result = run_program("x = 0\nwhile True:\n    x += 1", timeout_s=20, limits=SandboxLimits(cpu_s=1))
    _assert_failed(result, "killed")


def test_fork_bomb_blocked_by_guard() -> None:
    result = run_program("import os\nwhile True:\n    os.fork()", timeout_s=5)
    _assert_failed(result)
    assert "os.fork is disabled" in result.stderr_tail


def test_fork_bomb_bounded_and_reaped(caps: dict) -> None:
    """Guard off, children escape into new sessions: the process limit bounds the bomb and every
    process is killed afterwards (by uid/session), so the process table is back to normal."""
    bomb = (
        "import os, time\n"
        "while True:\n"
        "    try:\n"
        "        if os.fork() == 0:\n"
        "            os.setsid()\n"  # leave the process group: killpg alone would miss it
        "    except OSError:\n"
        "        time.sleep(0.01)\n"
    )
    before = _live_process_count()
    result = run_program(bomb, timeout_s=2.0, limits=SandboxLimits(python_guard=False, max_procs=16))
    _assert_failed(result, "timeout")
    time.sleep(0.2)
    assert _sandbox_processes() == []
    # Killed orphans are zombies until init reaps them; count live processes. Other work may run
    # on this machine: allow a little slack, well below the bomb's 16.
    assert _live_process_count() <= before + 6


def test_memory_bomb_fails(caps: dict) -> None:
    start = time.monotonic()
    result = run_program("blocks = []\nwhile True:\n    blocks.append(bytearray(50 * 1024 * 1024))",
                         timeout_s=20, limits=SandboxLimits(memory_mb=256))
    _assert_failed(result, "failed", "killed")
    assert "MemoryError" in result.stderr_tail or result.status == "killed"
    assert time.monotonic() - start < 15
    _assert_failed(run_program("x = bytearray(64 * 1024 ** 3)", timeout_s=10))


@pytest.mark.parametrize("guard", [True, False], ids=["guard", "os-layer-only"])
def test_files_outside_workdir_untouched(tmp_path: Path, caps: dict, guard: bool) -> None:
    if not guard:
        _needs(caps, "dropped_privileges")
    outside = tmp_path / "outside"
    outside.mkdir()
    sentinel = outside / "sentinel.txt"
    sentinel.write_text("original")
    before = sorted(p.name for p in outside.iterdir())
    limits = SandboxLimits(python_guard=guard)
    attacks = [
        f"import os\nos.remove({str(sentinel)!r})",
        f"open({str(sentinel)!r}, 'w').write('pwned')",
        f"open({str(outside / 'new.txt')!r}, 'w').write('pwned')",
        f"import shutil\nshutil.rmtree({str(outside)!r})",
        f"import os\nos.rename({str(sentinel)!r}, {str(outside / 'moved')!r})",
    ]
    for result in run_many(attacks, workers=2, timeout_s=10, limits=limits):
        _assert_failed(result)
    assert sentinel.read_text() == "original"
    assert sorted(p.name for p in outside.iterdir()) == before


def test_shared_tmp_writes_do_not_leak(caps: dict) -> None:
    _needs(caps, "private_tmp")
    name = f"distill-sbx-leak-{os.getpid()}"
    result = run_program(f"open('/tmp/{name}', 'w').write('x')\nprint('wrote')", timeout_s=10)
    assert result.passed and result.stdout_tail == "wrote\n"
    assert not Path("/tmp", name).exists()


@pytest.mark.parametrize("guard", [True, False], ids=["guard", "os-layer-only"])
def test_socket_to_local_listener_gets_nothing(caps: dict, guard: bool) -> None:
    if not guard:
        _needs(caps, "netns")
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(5)
    server.settimeout(0.2)
    port = server.getsockname()[1]
    received: list[bytes] = []
    stop = threading.Event()

    def accept_loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(1)
                try:
                    received.append(conn.recv(1024) or b"<connected>")
                except OSError:
                    received.append(b"<connected>")

    thread = threading.Thread(target=accept_loop, daemon=True)
    thread.start()
    try:
        program = (f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
                   "s.sendall(b'exfiltrated')\ns.close()")
        result = run_program(program, timeout_s=10, limits=SandboxLimits(python_guard=guard))
        _assert_failed(result)
        time.sleep(0.3)
    finally:
        stop.set()
        thread.join(timeout=2)
        server.close()
    assert received == []


@pytest.mark.parametrize("guard", [True, False], ids=["guard", "os-layer-only"])
def test_killing_the_parent_fails(caps: dict, guard: bool) -> None:
    if not guard:
        _needs(caps, "dropped_privileges")  # without it the test process really would die
    program = "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nimport time\ntime.sleep(1)"
    result = run_program(program, timeout_s=10, limits=SandboxLimits(python_guard=guard))
    _assert_failed(result)
    assert "PermissionError" in result.stderr_tail  # EPERM from the kernel, or the guard's stub
    # still alive to assert this
    assert os.getpid() > 0


def test_printing_megabytes_is_capped_and_fast() -> None:
    start = time.monotonic()
    program = "import sys\nfor _ in range(200):\n    sys.stdout.write('x' * 100_000 + '\\n')\nassert False"
    result = run_program(program, timeout_s=20, limits=SandboxLimits(output_cap_bytes=64 * 1024))
    elapsed = time.monotonic() - start
    _assert_failed(result)
    assert result.output_truncated
    assert len(result.stdout_tail) <= 64 * 1024
    assert "AssertionError" in result.stderr_tail
    assert elapsed < 10


def test_grandchild_holding_pipes_is_killed(caps: dict) -> None:
    """A background child that outlives the program must not hang the harness."""
    program = ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\n"
               "print('parent done')")
    start = time.monotonic()
    result = run_program(program, timeout_s=30, limits=GUARD_OFF)
    assert time.monotonic() - start < 5
    assert result.passed and result.stdout_tail == "parent done\n"
    time.sleep(0.1)
    assert _sandbox_processes() == []


def test_confinement_report(caps: dict) -> None:
    for key in ("netns", "mountns", "private_tmp", "dropped_privileges", "no_new_privs", "python_guard"):
        assert key in caps
    if os.geteuid() == 0:
        assert caps["dropped_privileges"] and caps["uid"] != 0
