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
Where a layer is unavailable (non-root without user namespaces, no CAP_SYS_ADMIN in a container) the
run continues with the remaining layers; set `SandboxLimits.required` to turn that into an error.
"""

from __future__ import annotations

import json
import os
import pwd
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

ExecStatus = Literal["passed", "failed", "timeout", "error", "killed"]

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
    """Outcome of one program. `passed` is True only for a clean exit with status 0."""

    passed: bool
    status: ExecStatus
    stdout_tail: str
    stderr_tail: str
    wall_s: float
    returncode: int | None = None
    output_truncated: bool = False
    confinement: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def run_program(program: str, timeout_s: float = 5.0, limits: SandboxLimits | None = None) -> ExecResult:
    """Run `program` (Python source) confined; never raises for anything the program does."""
    limits = limits or SandboxLimits()
    start = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="distill-sbx-")
    uid: int | None = None
    proc: subprocess.Popen | None = None
    report_r = -1
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
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", str(_CHILD), json.dumps(cfg)],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                pass_fds=(report_w,), start_new_session=True, env=_scrubbed_env(workdir), cwd=workdir,
            )
        finally:
            os.close(report_w)
        out, err, truncated, timed_out = _drain(proc, start + timeout_s, limits.output_cap_bytes, uid)
        returncode = proc.wait()
        report = _read_report(report_r)
        return _result(returncode, timed_out, report, out, err, truncated, time.monotonic() - start)
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
        if report_r >= 0:
            os.close(report_r)
        shutil.rmtree(workdir, ignore_errors=True)
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
    """Dedicated uids, one per concurrent run: no passwd entry and no process may already use them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._in_use: set[int] = set()

    def acquire(self, base: int) -> int:
        with self._lock:
            busy = {u for row in _proc_table() for u in row[4]}
            for uid in range(base, base + 4096):
                if uid in self._in_use or uid in busy or _has_passwd_entry(uid):
                    continue
                self._in_use.add(uid)
                return uid
        raise OSError("no free sandbox uid")

    def release(self, uid: int) -> None:
        with self._lock:
            self._in_use.discard(uid)


def _has_passwd_entry(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
        return True
    except KeyError:
        return False


_UID_POOL = _UidPool()
