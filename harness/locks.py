"""One writer per results directory: advisory flock-based locks with the holder recorded.

A lock is a file under `<dir>/.locks/`; flock(2) ties it to an open file description, so the
kernel releases it when the holder exits in any way (SIGKILL included). A lock file left behind
by a dead process is therefore not "held": the next run simply takes it over (and says so when
the recorded pid is gone). The file's content (pid, host, start time, command) is only for the
message a second run prints.

Layout for suites (`distill-bench run`):
  run.lock               an unsharded run holds it exclusively; every `--shard i/n` run holds it shared
  shard-<i>-of-<n>.lock  a sharded run holds its own shard exclusively
  cell-<cell_id>.lock    held while one cell trains and evaluates, so shards split differently
                         (1/2 and 1/3 on one dir) still never work on the same cell at once

Prepared teachers (`harness.teachers`) use the same FileLock, waiting rather than failing:
`<cache>/prepared_teachers/.locks/<task>-<key>.lock` is held while one process prepares that teacher.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable

from harness.errors import DiskError, LockHeldError

LOCK_DIRNAME = ".locks"


def holder_info() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": " ".join(sys.argv)[:300]}


def describe_holder(info: dict[str, Any] | None) -> str:
    if not info:
        return "an unknown process (no holder recorded)"
    return f"pid {info.get('pid')} on {info.get('host')} since {info.get('started')} ({info.get('command')})"


def pid_alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, OverflowError):
        return True  # another user's live process, or an unreadable record: assume alive
    return True


class FileLock:
    """`with FileLock(path): ...` — exclusive (or shared) non-blocking flock; LockHeldError when busy."""

    def __init__(self, path: Path, *, shared: bool = False, what: str = "this directory"):
        self.path = Path(path)
        self.shared = shared
        self.what = what
        self.fd: int | None = None
        self.took_over: dict[str, Any] | None = None  # holder record of a dead process found in the file

    def acquire(self, *, wait: bool = False, on_wait: Callable[[str], None] | None = None) -> "FileLock":
        """Take the lock; busy: LockHeldError, or with `wait` block until the holder releases or dies
        (`on_wait` is told who holds it first). The kernel wakes the waiter; nothing polls."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise DiskError(f"cannot create the lock file {self.path} ({exc.strerror}): {self.what} is not writable. "
                            "Fix its permissions or free space, or choose another --results-dir / --output-dir") from None
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = describe_holder(read_holder(self.path))
            if not wait:
                raise LockHeldError(f"{self.what} is in use by {holder} (lock {self.path}). Wait for it to finish, "
                                    "or give this run another --results-dir / --shard") from None
            if on_wait is not None:
                on_wait(f"waiting for {holder}, which holds {self.what} (lock {self.path})")
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(fd, fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX)
        self.fd = fd
        if not self.shared:
            previous = read_holder(self.path)
            if previous and previous.get("pid") != os.getpid() and not pid_alive(previous.get("pid")):
                self.took_over = previous
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(holder_info()) + "\n").encode(), 0)
        return self

    def release(self) -> None:
        if self.fd is not None:
            if not self.shared:
                try:
                    os.ftruncate(self.fd, 0)  # a finished holder leaves no stale record behind
                except OSError:
                    pass
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "FileLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def read_holder(path: Path) -> dict[str, Any] | None:
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace").strip()
        return json.loads(text) if text else None
    except (OSError, ValueError):
        return None


class SuiteLocks:
    """The locks one `distill-bench run` holds on a results directory for its whole life."""

    def __init__(self, results_dir: Path, shard: str | None):
        self.dir = Path(results_dir) / LOCK_DIRNAME
        self.results_dir = Path(results_dir)
        self.shard = shard
        self.held: list[FileLock] = []

    def __enter__(self) -> "SuiteLocks":
        try:
            if self.shard:
                i, n = self.shard.split("/")
                shard_lock = FileLock(self.dir / f"shard-{i}-of-{n}.lock", what=f"shard {self.shard} of {self.results_dir}")
                self.held.append(shard_lock.acquire())
                run_lock = FileLock(self.dir / "run.lock", shared=True, what=str(self.results_dir))
                try:
                    self.held.append(run_lock.acquire())
                except LockHeldError as err:
                    raise LockHeldError(f"{err} (an unsharded run holds the whole directory)") from None
            else:
                run_lock = FileLock(self.dir / "run.lock", what=str(self.results_dir))
                try:
                    self.held.append(run_lock.acquire())
                except LockHeldError as err:
                    shards = [describe_holder(read_holder(p)) for p in sorted(self.dir.glob("shard-*.lock")) if read_holder(p)]
                    if shards:
                        raise LockHeldError(f"{self.results_dir} is in use by shard run(s): {'; '.join(shards)}. "
                                            "Wait for them, or run this one with --shard / another --results-dir") from None
                    raise err from None
        except BaseException:
            self.release()
            raise
        for lock in self.held:
            if lock.took_over:
                print(f"note: took over the lock {lock.path} left by {describe_holder(lock.took_over)}, "
                      "which is no longer running", file=sys.stderr)
        return self

    def cell_lock(self, cell_id: str) -> FileLock:
        return FileLock(self.dir / f"cell-{cell_id}.lock", what=f"cell {cell_id}")

    def release(self) -> None:
        for lock in reversed(self.held):
            lock.release()
        self.held.clear()

    def __exit__(self, *exc) -> None:
        self.release()
