"""Run a module as `__main__`, recording on every rank but 0 each write under a watched directory.

    torchrun ... -m tests.rank_write_guard LOG_DIR WATCHED MODULE [ARGS...]

Ranks other than 0 (the `RANK` torchrun sets) install an audit hook (PEP 578) and append one line per
write-like event on a path under WATCHED (opening for writing, creating, renaming, replacing,
removing, copying) to LOG_DIR/rank<R>_writes.txt, which starts with "guard active" so a test can
tell an empty record from a guard that never ran. Only writes that go through Python's I/O calls are
seen (not those a C or Rust extension makes itself, e.g. safetensors); the multi-process run test
uses it to check that only rank 0 writes results.
"""

from __future__ import annotations

import os
import runpy
import sys

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_PATH_EVENTS = {"os.remove", "os.rmdir", "os.mkdir", "shutil.rmtree", "os.truncate", "os.chmod", "os.utime"}
_TWO_PATH_EVENTS = {"os.rename", "os.replace", "os.link", "os.symlink", "shutil.copyfile", "shutil.move"}


def _under(path, roots: tuple[str, ...]) -> bool:
    if isinstance(path, int) or path is None:
        return False  # a file descriptor: its open was seen already
    try:
        p = os.path.abspath(os.fsdecode(path))
    except TypeError:
        return False
    return any(p == r or p.startswith(r + os.sep) for r in roots)


def install(log_path: str, watched: str) -> None:
    roots = tuple({os.path.abspath(watched), os.path.realpath(watched)})
    log = open(log_path, "a", buffering=1)  # opened before the hook, outside WATCHED
    log.write("guard active\n")

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & _WRITE_FLAGS)
            if writing and _under(path, roots):
                log.write(f"open {mode or flags} {os.fsdecode(path)}\n")
        elif event in _PATH_EVENTS:
            if _under(args[0], roots):
                log.write(f"{event} {os.fsdecode(args[0])}\n")
        elif event in _TWO_PATH_EVENTS:
            if _under(args[0], roots) or _under(args[1], roots):
                log.write(f"{event} {os.fsdecode(args[0])} -> {os.fsdecode(args[1])}\n")

    sys.addaudithook(hook)


def main() -> None:
    log_dir, watched, module, *rest = sys.argv[1:]
    rank = os.environ.get("RANK", "0")
    if rank != "0":
        install(os.path.join(log_dir, f"rank{rank}_writes.txt"), watched)
    sys.argv = [module, *rest]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
