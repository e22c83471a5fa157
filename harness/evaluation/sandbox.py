"""Run untrusted, model-written Python programs in a confined child process.

Layers (each one is reported per run in `ExecResult.confinement`):
- a fresh temporary working directory, removed afterwards;
- `resource` limits: CPU seconds, address space, process count, file size, open files, no core files;
- a new session / process group; on timeout or exit every process left behind is SIGKILLed, found by
  process group, session and (when running as root) by the dedicated sandbox uid, so a child that
  called setsid() cannot escape;
- a wall-clock timeout; stdout/stderr drained continuously and only the last `output_cap_bytes` kept;
- a scrubbed environment and `python -I -S` (no site-packages, no PYTHON* variables);
- no network: a new network namespace (root, or an unprivileged user namespace where allowed);
- when running as root: a private mount namespace with tmpfs over /tmp, /var/tmp, /dev/shm and a
  per-slot unprivileged uid (no passwd entry, not used by any process), so the filesystem
  permissions really protect files outside the working directory and RLIMIT_NPROC counts only the
  sandbox's own processes;
- a Python-level guard in the child (sockets, process control, destructive file operations).

Two entry points: `run_program` runs a whole program and reports how it exited (exit status 0 is
"passed": fine for programs we wrote, never a score); `run_tests` scores model-written code against
a problem's tests, and there a pass is *proof* that `check(entry_point)` returned normally: a
per-run random nonce the harness's own tester process writes on a dedicated fd after the tests
completed, which the candidate's process never holds (`_sandbox_tests.py` explains how). Every
other ending is a failure with a status saying which: failed (an assertion or exception),
exited_early (the program's process ended, status 0 or not, before the tests finished), signal,
crash (SIGSEGV and kin), timeout, evidence_forged (something on the proof fd that is not the
nonce), error (the sandbox could not be set up).
Where a layer is unavailable (non-root without user namespaces, no CAP_SYS_ADMIN in a container) the
run continues with the remaining layers; set `SandboxLimits.required` to turn that into an error.
"""

from __future__ import annotations

import hmac
import json
import os
import pwd
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Sequence

ExecStatus = Literal["passed", "failed", "timeout", "error", "killed",  # run_program
                     "exited_early", "signal", "crash", "evidence_forged"]  # run_tests adds these
# Statuses the tester itself may report; anything else on the proof fd is forged.
_TESTER_FAILURES = ("failed", "exited_early", "signal", "crash")
_PROOF_CAP = 1 << 20

_CHILD = Path(__file__).with_name("_sandbox_child.py")
_MIB = 1024 * 1024


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits and confinement switches for one sandboxed run."""

    cpu_s: int = 10
    memory_mb: int = 1024
    max_procs: int = 32
    max_file_mb: int = 16
    max_open_files: int = 64
    output_cap_bytes: int = 64 * 1024
    tmpfs_mb: int = 64
    allow_network: bool = False
    drop_privileges: bool = True
    python_guard: bool = True
    uid_base: int = 1_900_000_000
    # Confinement report keys that must be true, else the run is an "error" (e.g. ("netns",)).
    required: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ExecResult:
    """Outcome of one run. `passed`: run_program - exit status 0; run_tests - the proof was verified."""

    passed: bool
    status: ExecStatus
    stdout_tail: str
    stderr_tail: str
    wall_s: float
    returncode: int | None = None
    output_truncated: bool = False
    confinement: dict = field(default_factory=dict)
    detail: str = ""  # run_tests: how the run ended, in words (the failing assertion, the exit status)

    def to_dict(self) -> dict:
        return asdict(self)


def run_program(program: str, timeout_s: float = 5.0, limits: SandboxLimits | None = None) -> ExecResult:
    """Run `program` (Python source) confined; never raises for anything the program does."""
    return _launch(program, timeout_s, limits or SandboxLimits(), None)


def run_tests(solution: str, tests: str, entry_point: str, timeout_s: float = 5.0,
              limits: SandboxLimits | None = None, helpers: str = "") -> ExecResult:
    """Score `solution` (model-written module source) with `tests` (defining `check(candidate)`).

    `helpers` (e.g. the problem's prompt) is executed before `tests` in the tester's namespace, so
    the tests use the dataset's helper functions, not the candidate's versions of them. The tests
    see the candidate's `entry_point` through a proxy: arguments and return values cross as plain
    data (None, bool, int, float, complex, str, bytes, list, tuple, dict, set, frozenset, range,
    Fraction, Decimal; iterators as one-shot iterators); any other return value fails the tests.
    `passed` only when the tester's verdict carries this run's nonce; never raises.
    """
    job = {"tests": tests, "helpers": helpers, "entry_point": entry_point}
    return _launch(solution, timeout_s, limits or SandboxLimits(), job)


def _launch(program: str, timeout_s: float, limits: SandboxLimits, job: dict | None) -> ExecResult:
    start = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="distill-sbx-")
    # Not chowned to the sandbox uid: the tests never live where the candidate's process can read them.
    private = tempfile.mkdtemp(prefix="distill-sbx-tests-") if job is not None else None
    uid: int | None = None
    proc: subprocess.Popen | None = None
    own_fds: list[int] = []
    try:
        if limits.drop_privileges and os.geteuid() == 0:
            uid = _UID_POOL.acquire(limits.uid_base)
        program_path = os.path.join(workdir, "program.py")
        # errors="replace": a lone surrogate in decoded model output must not crash the harness
        with open(program_path, "w", encoding="utf-8", errors="replace") as fh:
            fh.write(program)
        if uid is not None:
            os.chown(workdir, uid, uid)
        report_r, report_w = os.pipe()
        own_fds += [report_r, report_w]
        cfg = {
            "workdir": workdir, "program_path": program_path, "uid": uid, "gid": uid,
            "allow_network": limits.allow_network, "python_guard": limits.python_guard,
            "report_fd": report_w, "required": list(limits.required), "tmpfs_bytes": limits.tmpfs_mb * _MIB,
            "limits": {
                "cpu_s": limits.cpu_s, "memory_bytes": limits.memory_mb * _MIB,
                "fsize_bytes": limits.max_file_mb * _MIB, "nofile": limits.max_open_files,
                "nproc": _nproc_limit(limits.max_procs, uid),
            },
        }
        pass_fds = [report_w]
        nonce = proof_r = None
        if job is not None:
            _protect_harness_process()
            tests_path = os.path.join(private, "tests.json")  # type: ignore[arg-type]
            with open(tests_path, "w", encoding="utf-8", errors="replace") as fh:
                json.dump(job, fh)
            nonce = secrets.token_hex(32)
            nonce_r, nonce_w = os.pipe()
            own_fds += [nonce_r, nonce_w]
            os.write(nonce_w, nonce.encode())  # 64 bytes: fits the pipe buffer, read by the tester
            os.close(nonce_w)
            own_fds.remove(nonce_w)
            proof_r, proof_w = os.pipe()
            own_fds += [proof_r, proof_w]
            cfg.update(mode="tests", tests_path=tests_path, entry_point=job["entry_point"],
                       nonce_fd=nonce_r, proof_fd=proof_w)
            pass_fds += [nonce_r, proof_w]
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", str(_CHILD), json.dumps(cfg)],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                pass_fds=tuple(pass_fds), start_new_session=True, env=_scrubbed_env(workdir), cwd=workdir,
            )
        finally:
            for fd in pass_fds:  # the child's ends: keeping them would hide the child's EOF
                os.close(fd)
                own_fds.remove(fd)
        out, err, truncated, timed_out = _drain(proc, start + timeout_s, limits.output_cap_bytes, uid)
        returncode = proc.wait()
        report = _read_report(report_r)
        if job is None:
            return _result(returncode, timed_out, report, out, err, truncated, time.monotonic() - start)
        verdict = _read_all(proof_r, _PROOF_CAP)  # type: ignore[arg-type]
        return _test_result(returncode, timed_out, report, verdict, nonce, out, err, truncated,  # type: ignore[arg-type]
                            time.monotonic() - start)
    except OSError as exc:  # the harness could not start the child at all
        return ExecResult(False, "error", "", f"sandbox error: {exc}", time.monotonic() - start)
    finally:
        if proc is not None:
            _kill_leftovers(proc.pid, uid)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
        for fd in own_fds:
            os.close(fd)
        shutil.rmtree(workdir, ignore_errors=True)
        if private is not None:
            shutil.rmtree(private, ignore_errors=True)
        if uid is not None:
            _UID_POOL.release(uid)


def run_many(
    programs: Sequence[str], workers: int = 2, timeout_s: float = 5.0, limits: SandboxLimits | None = None
) -> list[ExecResult]:
    """Run programs concurrently (each in its own confined child); results in input order."""
    if not programs:
        return []
    # Threads suffice: each one only waits on its child process.
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(lambda p: run_program(p, timeout_s, limits), programs))


@dataclass(frozen=True)
class ScoringJob:
    """One `run_tests` call: solution source, tests defining `check`, entry point, helper source."""

    solution: str
    tests: str
    entry_point: str
    helpers: str = ""


def run_many_tests(jobs: Sequence[ScoringJob], workers: int = 2, timeout_s: float = 5.0,
                   limits: SandboxLimits | None = None) -> list[ExecResult]:
    """`run_tests` for each job, concurrently; results in input order."""
    if not jobs:
        return []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(
            lambda j: run_tests(j.solution, j.tests, j.entry_point, timeout_s, limits, j.helpers), jobs))


def sandbox_capabilities(limits: SandboxLimits | None = None) -> dict:
    """Run a trivial program and return the confinement report (for protocol records and tests)."""
    result = run_program("pass", timeout_s=10.0, limits=limits)
    return {"status": result.status, **result.confinement}


# ---------------------------------------------------------------- internals


def _result(returncode: int, timed_out: bool, report: dict | None, out: bytes, err: bytes,
            truncated: bool, wall_s: float) -> ExecResult:
    status: ExecStatus
    if timed_out:
        status = "timeout"
    elif report is None:  # the launcher died before confinement was complete
        status = "error"
    elif returncode == 0:
        status = "passed"
    elif returncode < 0:  # a signal we did not send: CPU limit, segfault, OOM killer
        status = "killed"
    else:
        status = "failed"
    return ExecResult(
        passed=status == "passed", status=status,
        stdout_tail=out.decode("utf-8", "replace"), stderr_tail=err.decode("utf-8", "replace"),
        wall_s=wall_s, returncode=returncode, output_truncated=truncated, confinement=report or {},
    )


def _test_result(returncode: int, timed_out: bool, report: dict | None, verdict_bytes: bytes, nonce: str,
                 out: bytes, err: bytes, truncated: bool, wall_s: float) -> ExecResult:
    """A pass needs the tester's verdict with this run's nonce; the exit status counts for nothing."""
    status, detail = verdict_status(verdict_bytes, nonce)
    if timed_out:
        status, detail = "timeout", "wall-clock limit reached before the tests finished"
    elif report is None:  # the launcher died before confinement was complete
        status, detail = "error", "the sandbox could not be set up"
    elif status is None:  # no verdict: the tester itself was killed or died
        status = "signal" if returncode < 0 else "crash"
        detail = f"the tester ended without a verdict (exit status {returncode})"
    return ExecResult(
        passed=status == "passed", status=status,  # type: ignore[arg-type]
        stdout_tail=out.decode("utf-8", "replace"), stderr_tail=err.decode("utf-8", "replace"),
        wall_s=wall_s, returncode=returncode, output_truncated=truncated, confinement=report or {}, detail=detail,
    )


def verdict_status(verdict_bytes: bytes, nonce: str) -> tuple[str | None, str]:
    """(status, detail) from what arrived on the proof fd; None when nothing did.

    "passed" only with exactly this run's nonce (constant-time compare); anything malformed, an
    unknown status or a wrong nonce is "evidence_forged".
    """
    if not verdict_bytes:
        return None, ""
    try:
        verdict = json.loads(verdict_bytes.decode())
    except (UnicodeDecodeError, ValueError):
        return "evidence_forged", "unreadable verdict on the proof channel"
    if not isinstance(verdict, dict):
        return "evidence_forged", "malformed verdict on the proof channel"
    status, detail = verdict.get("status"), str(verdict.get("detail", ""))[:2000]
    if status == "passed":
        proof = verdict.get("proof")
        if isinstance(proof, str) and hmac.compare_digest(proof.encode(), nonce.encode()):
            return "passed", "check(candidate) returned normally"
        return "evidence_forged", "a pass claimed without this run's proof nonce"
    if status in _TESTER_FAILURES:
        return status, detail
    return "evidence_forged", f"unknown status {str(status)[:40]!r} on the proof channel"


def _protect_harness_process() -> None:
    """Without root the sandbox shares our uid: being non-dumpable makes this process's
    /proc/<pid>/{environ,mem,fd} root-only and un-ptraceable, so model-written code cannot read
    the harness's secrets (API keys) or reopen its pipes. As root the sandbox runs under another
    uid and the kernel already refuses; nothing to do."""
    global _PROTECTED
    if _PROTECTED or os.geteuid() == 0:
        return
    import ctypes

    if ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0) != 0:  # PR_SET_DUMPABLE = 4
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")
    _PROTECTED = True


_PROTECTED = False


def _read_all(fd: int, cap: int) -> bytes:
    chunks, size = [], 0
    while size <= cap:
        data = os.read(fd, 65536)
        if not data:
            break
        chunks.append(data)
        size += len(data)
    return b"".join(chunks)


def _scrubbed_env(workdir: str) -> dict[str, str]:
    """Nothing from the parent's environment (tokens, proxies, paths) reaches the program."""
    return {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": "/tmp", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}


def _read_report(fd: int) -> dict | None:
    chunks = []
    while True:
        data = os.read(fd, 65536)
        if not data:
            break
        chunks.append(data)
    try:
        return json.loads(b"".join(chunks).decode()) if chunks else None
    except ValueError:
        return None


def _drain(proc: subprocess.Popen, deadline: float, cap: int, uid: int | None) -> tuple[bytes, bytes, bool, bool]:
    """Read both pipes until EOF or the deadline, keeping only the last `cap` bytes of each.

    Draining continuously means a program printing megabytes never blocks on a full pipe; once the
    main process has exited, leftover grandchildren still holding the pipes are killed.
    """
    bufs = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}  # type: ignore[union-attr]
    truncated = timed_out = False
    sel = selectors.DefaultSelector()
    for fd in bufs:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    exited_at: float | None = None
    try:
        while sel.get_map():
            now = time.monotonic()
            if now >= deadline and not timed_out:
                timed_out = True
                _kill_leftovers(proc.pid, uid)
                deadline = now + 2.0  # grace to collect what is still in the pipes
            elif now >= deadline:
                break
            if exited_at is None and proc.poll() is not None:
                exited_at = now
            if exited_at is not None and now - exited_at > 0.2:  # grandchildren keep the pipes open
                _kill_leftovers(proc.pid, uid)
            for key, _ in sel.select(timeout=min(0.05, max(0.0, deadline - now))):
                try:
                    data = os.read(key.fd, 65536)
                except BlockingIOError:
                    continue
                if not data:
                    sel.unregister(key.fd)
                    continue
                buf = bufs[key.fd]
                buf += data
                if len(buf) > cap:
                    del buf[: len(buf) - cap]
                    truncated = True
    finally:
        sel.close()
    if timed_out and proc.poll() is None:
        proc.kill()
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()  # type: ignore[union-attr]
    return bytes(bufs[out_fd]), bytes(bufs[err_fd]), truncated, timed_out


def _proc_table() -> list[tuple[int, int, int, str, tuple[int, ...]]]:
    """(pid, pgrp, session, state, uids) for every process, read from /proc."""
    rows = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                stat = fh.read().decode(errors="replace")
            with open(f"/proc/{name}/status", "rb") as fh:
                status = fh.read().decode(errors="replace")
        except OSError:  # exited meanwhile
            continue
        fields = stat[stat.rfind(")") + 2:].split()  # the command name may contain spaces and ')'
        uids: tuple[int, ...] = ()
        for line in status.splitlines():
            if line.startswith("Uid:"):
                uids = tuple(int(x) for x in line.split()[1:])
                break
        rows.append((int(name), int(fields[2]), int(fields[3]), fields[0], uids))
    return rows


def _kill_leftovers(leader: int, uid: int | None) -> None:
    """SIGKILL every process of the run: its group, its session and (root) its dedicated uid.

    Repeated until none is found, because a fork bomb may fork between a scan and the kills;
    RLIMIT_NPROC bounds how many there can be.
    """
    try:
        os.killpg(leader, signal.SIGKILL)
    except OSError:
        pass
    me = os.getpid()
    for attempt in range(200):
        victims = [
            pid for pid, pgrp, sid, state, uids in _proc_table()
            if pid != me and state not in ("Z", "X")
            and (pgrp == leader or sid == leader or (uid is not None and uid in uids))
        ]
        if not victims:
            return
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.002 * min(attempt + 1, 10))


def _nproc_limit(max_procs: int, uid: int | None) -> int:
    """RLIMIT_NPROC counts all processes of the uid: add the ones the user already runs when shared."""
    if uid is not None:
        return max_procs
    mine = os.getuid()
    return max_procs + sum(1 for row in _proc_table() if row[4] and row[4][0] == mine)


class _UidPool:
    """Dedicated uids, one per concurrent run: no passwd entry and no process may already use them.

    Held across processes too (an flock per uid under `UID_LOCK_DIR`, released by the kernel if
    the holder dies): two harnesses on one machine (suite shards, parallel test runs) would
    otherwise pick the same uid, and one's cleanup, which kills every process of its uid, would
    kill the other's running programs and score them as failures.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._in_use: dict[int, int] = {}  # uid -> fd holding its cross-process lock

    def acquire(self, base: int) -> int:
        import fcntl

        with self._lock:
            os.makedirs(UID_LOCK_DIR, mode=0o700, exist_ok=True)
            busy = {u for row in _proc_table() for u in row[4]}
            for uid in range(base, base + 4096):
                if uid in self._in_use or uid in busy or _has_passwd_entry(uid):
                    continue
                fd = os.open(os.path.join(UID_LOCK_DIR, f"{uid}.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:  # another harness process runs a program under this uid
                    os.close(fd)
                    continue
                self._in_use[uid] = fd
                return uid
        raise OSError("no free sandbox uid")

    def release(self, uid: int) -> None:
        with self._lock:
            fd = self._in_use.pop(uid, None)
            if fd is not None:
                os.close(fd)  # closing drops the flock


UID_LOCK_DIR = "/tmp/distill-bench-sandbox-uids"


def _has_passwd_entry(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
        return True
    except KeyError:
        return False


_UID_POOL = _UidPool()
