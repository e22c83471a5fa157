"""Proof of a pass: run a problem's tests against model-written code in two processes.

Loaded by `_sandbox_child.py` ("tests" mode) after the launcher has confined itself; standard
library only, like the launcher.

Why two processes: code running in a process owns it (frames, trace hooks, `/proc/self/mem`,
exit paths), so nothing that process reports after running the candidate can be trusted. Hence:

- the *candidate* process (C) is forked from the launcher **before** the tests and the proof
  nonce are read; it executes only the solution (prompt + completion) and then answers calls
  `entry_point(*args)` sent over a pipe, replying with the return value as plain data;
- the *tester* process (T, the launcher itself, non-dumpable so C, same uid, cannot read its
  memory, environment or fds, nor ptrace it) reads the tests, runs `check(proxy)` where `proxy`
  forwards each call to C and decodes the reply into plain Python values (no objects of the
  candidate's making ever reach the tests, so `__eq__` tricks have nothing to hook), and only
  after `check` returned normally reads the nonce from its pipe and writes it, with the verdict,
  on the proof fd. C never holds that fd, the nonce pipe or the tests' fd (closed right after the
  fork, before any candidate code runs).

Any way C ends before `check` returned (clean exit of any kind, signal, crash) is seen by T as EOF
on the reply pipe and recorded with the way it ended; the harness counts a pass only when the
verdict carries its nonce.

Wire format: each message is an 8-byte big-endian length and a JSON body. Values are tagged so
types survive exactly (bool vs int, list vs tuple, float bit patterns including nan and -0.0);
ranges, Fractions, Decimals and iterators (generator, map, ...) cross too, the last as a one-shot
iterator over the materialized items. Objects of any other type are refused: the tests fail.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback

MAX_MESSAGE = 64 * 1024 * 1024  # a reply larger than this is a failure, not an allocation
DETAIL_CHARS = 2000
_CRASH_SIGNALS = {signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGILL, signal.SIGFPE}
_SMALL_INT = 1 << 53  # larger ints travel as hex: JSON readers may cap decimal digits


class CandidateError(Exception):
    """The candidate's function raised, or returned something that is not plain data."""


class CandidateEnded(BaseException):
    """The candidate's process ended (EOF on its reply pipe). A BaseException so a test's
    `except Exception` cannot swallow it."""


# ---------------------------------------------------------------- values across the boundary


def encode(value, depth: int = 0):
    """Plain data as tagged JSON; anything else is refused (TypeError)."""
    if depth > 200:
        raise TypeError("value nested too deeply to cross the sandbox boundary")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        value = int.__index__(value)  # subclasses become plain ints
        return value if -_SMALL_INT < value < _SMALL_INT else {"i": format(value, "x")}
    if isinstance(value, float):
        return {"f": float.hex(float(value))}
    if isinstance(value, str):
        return {"s": str.__str__(value)}
    if isinstance(value, complex):
        return {"c": [float.hex(value.real), float.hex(value.imag)]}
    if isinstance(value, (bytes, bytearray)):
        return {"b": bytes(value).hex()}
    if isinstance(value, tuple):
        return {"t": [encode(v, depth + 1) for v in tuple.__iter__(value)]}
    if isinstance(value, list):
        return {"l": [encode(v, depth + 1) for v in list.__iter__(value)]}
    if isinstance(value, dict):
        return {"d": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in dict.items(value)]}
    if isinstance(value, frozenset):
        return {"z": [encode(v, depth + 1) for v in frozenset.__iter__(value)]}
    if isinstance(value, set):
        return {"e": [encode(v, depth + 1) for v in set.__iter__(value)]}
    if isinstance(value, range):
        return {"r": [encode(value.start), encode(value.stop), encode(value.step)]}
    fractions, decimal = sys.modules.get("fractions"), sys.modules.get("decimal")  # only if the program used them
    if fractions is not None and isinstance(value, fractions.Fraction):
        return {"q": [encode(value.numerator), encode(value.denominator)]}
    if decimal is not None and isinstance(value, decimal.Decimal):
        return {"m": str(decimal.Decimal.__str__(value))}
    if hasattr(type(value), "__next__") and iter(value) is value:
        # A generator/map/filter result: the tests may consume it (`tuple(candidate(x))`, as
        # HumanEval/33 does); it crosses as a one-shot iterator, so it still differs from a list.
        return {"n": [encode(v, depth + 1) for v in value]}
    raise TypeError(f"a {type(value).__name__} cannot cross the sandbox boundary (plain data only)")


def decode(obj):
    """Inverse of `encode`; raises ValueError/TypeError on anything malformed."""
    if obj is None or isinstance(obj, bool) or type(obj) is int:
        return obj
    if type(obj) is not dict or len(obj) != 1:
        raise ValueError(f"malformed value {str(obj)[:80]!r}")
    (tag, v), = obj.items()
    if tag == "s" and type(v) is str:
        return v
    if tag == "i" and type(v) is str:
        return int(v, 16)
    if tag == "f" and type(v) is str:
        return float.fromhex(v)
    if tag == "c" and type(v) is list and len(v) == 2:
        return complex(float.fromhex(v[0]), float.fromhex(v[1]))
    if tag == "b" and type(v) is str:
        return bytes.fromhex(v)
    if tag == "m" and type(v) is str:
        import decimal

        return decimal.Decimal(v)
    if type(v) is not list:
        raise ValueError(f"malformed value {str(obj)[:80]!r}")
    if tag == "r" and len(v) == 3:
        return range(*(_plain_int(decode(x)) for x in v))
    if tag == "q" and len(v) == 2:
        import fractions

        return fractions.Fraction(_plain_int(decode(v[0])), _plain_int(decode(v[1])))
    if tag == "n":
        return iter([decode(x) for x in v])
    if tag == "l":
        return [decode(x) for x in v]
    if tag == "t":
        return tuple(decode(x) for x in v)
    if tag == "d":
        return {decode(k): decode(x) for k, x in v}
    if tag == "z":
        return frozenset(decode(x) for x in v)
    if tag == "e":
        return {decode(x) for x in v}
    raise ValueError(f"unknown value tag {tag!r}")


def _plain_int(value) -> int:
    if type(value) is not int:
        raise ValueError("malformed integer")
    return value


# ---------------------------------------------------------------- framing


def send(fd: int, message: dict) -> None:
    body = json.dumps(message, ensure_ascii=True).encode()
    data = len(body).to_bytes(8, "big") + body
    while data:
        data = data[os.write(fd, data):]


def _read_exactly(fd: int, n: int) -> bytes | None:
    chunks, got = [], 0
    while got < n:
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def recv(fd: int) -> dict | None:
    """The next message, or None at EOF (the writer's process ended)."""
    head = _read_exactly(fd, 8)
    if head is None:
        return None
    n = int.from_bytes(head, "big")
    if n > MAX_MESSAGE:
        raise CandidateError(f"reply of {n} bytes exceeds the {MAX_MESSAGE}-byte limit")
    body = _read_exactly(fd, n)
    if body is None:
        return None
    message = json.loads(body)
    if type(message) is not dict:
        raise CandidateError("malformed reply")
    return message


# ---------------------------------------------------------------- the two processes


def run_tests(cfg: dict, source: str, tests_fd: int, candidate_setup) -> None:
    """Fork the candidate, run the tests here, write the verdict; never returns."""
    call_r, call_w = os.pipe()  # tester -> candidate
    reply_r, reply_w = os.pipe()  # candidate -> tester
    sys.stdout.flush()
    sys.stderr.flush()
    import gc

    gc.freeze()  # the collector then leaves the launcher's objects alone: fewer copy-on-write pages after the fork
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            # Before any candidate code: drop every secret-bearing fd this process inherited.
            for fd in (tests_fd, cfg["nonce_fd"], cfg["proof_fd"], call_w, reply_r):
                os.close(fd)
            candidate_setup(cfg["workdir"], cfg["python_guard"])
            code = _serve(source, cfg["entry_point"], call_r, reply_w)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:  # noqa: BLE001 - whatever happens, never fall through into the tester's code
            code = 1
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code if isinstance(code, int) and 0 <= code < 256 else 1)
    os.close(call_r)
    os.close(reply_w)
    verdict = _tester(cfg, tests_fd, pid, call_w, reply_r)
    try:
        os.kill(pid, signal.SIGKILL)  # its leftover threads are of no interest once the tests ended
        os.waitpid(pid, 0)  # reaped here, so its CPU time is accounted to this run
    except OSError:  # already reaped by `ended()`
        pass
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:  # noqa: BLE001
        pass
    os.write(cfg["proof_fd"], json.dumps(verdict).encode())
    os.close(cfg["proof_fd"])
    os._exit(0)


def _serve(source: str, entry_point: str, call_r: int, reply_w: int) -> int:
    """Candidate side: run the solution module, then answer calls until the tester hangs up."""
    import linecache

    linecache.cache["<program>"] = (len(source), None, source.splitlines(True), "<program>")
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        exec(compile(source, "<program>", "exec"), namespace)  # noqa: S102 - confined candidate code
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - the solution module itself failed
        send(reply_w, {"error": _describe(exc, print_tb=True)})
        return 1
    _flush()
    fn = namespace.get(entry_point)
    if not callable(fn):
        send(reply_w, {"error": f"the program defines no function {entry_point!r}"})
        return 1
    send(reply_w, {"ready": True})
    while True:
        message = recv(call_r)
        if message is None:
            return 0
        args, kwargs = decode(message["a"]), decode(message["k"])
        try:
            reply = {"ok": encode(fn(*args, **kwargs))}
        except SystemExit:
            raise
        except BaseException as exc:  # noqa: BLE001 - reported to the tests as a failed call
            reply = {"exc": _describe(exc, print_tb=True)}
        _flush()
        send(reply_w, reply)


def _flush() -> None:
    """The tester SIGKILLs this process when the tests end: keep its output in the pipes first."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001 - the program may have closed or replaced them
            pass


def _describe(exc: BaseException, print_tb: bool = False) -> str:
    try:
        if print_tb:
            traceback.print_exception(type(exc), exc, exc.__traceback__)
        return f"{type(exc).__name__}: {exc}"[:DETAIL_CHARS]
    except BaseException:  # noqa: BLE001 - a hostile __str__
        return "an exception that cannot be described"


def _tester(cfg: dict, tests_fd: int, pid: int, call_w: int, reply_r: int) -> dict:
    """Tester side: the tests' own verdict, with the proof nonce only after `check` returned."""
    chunks = []
    while True:
        data = os.read(tests_fd, 1 << 20)
        if not data:
            break
        chunks.append(data)
    os.close(tests_fd)
    spec = json.loads(b"".join(chunks))

    def ended() -> dict:
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
            kind = "crash" if sig in _CRASH_SIGNALS else "signal"
            return {"status": kind, "detail": f"the program's process was killed by {name} before the tests finished"}
        code = os.WEXITSTATUS(status)
        return {"status": "exited_early", "detail": f"the program's process exited with status {code} "
                                                    "before the tests finished"}

    try:
        first = recv(reply_r)
        if first is None:
            return ended()
        if "error" in first:
            return {"status": "failed", "detail": str(first["error"])[:DETAIL_CHARS]}
        if first.get("ready") is not True:
            return {"status": "failed", "detail": "malformed start message from the program"}

        def candidate(*args, **kwargs):
            send(call_w, {"a": encode(args), "k": encode(kwargs)})
            reply = recv(reply_r)
            if reply is None:
                raise CandidateEnded()
            if "ok" in reply:
                try:
                    return decode(reply["ok"])
                except (ValueError, TypeError, RecursionError) as exc:
                    raise CandidateError(f"malformed return value: {exc}") from None
            raise CandidateError(str(reply.get("exc", "malformed reply"))[:DETAIL_CHARS])

        namespace: dict = {"__name__": "__tests__"}
        if spec.get("helpers"):
            exec(compile(spec["helpers"], "<prompt>", "exec"), namespace)  # noqa: S102 - the dataset's prompt
        # Tests may name the function itself (HumanEval/33 compares with `sort_third(...)`): in a
        # single-module run that name is the candidate's definition, so here it is the proxy.
        namespace[cfg["entry_point"]] = candidate
        exec(compile(spec["tests"], "<tests>", "exec"), namespace)  # noqa: S102 - the dataset's tests
        namespace["check"](candidate)
    except CandidateEnded:
        return ended()
    except BaseException as exc:  # noqa: BLE001 - a failed assertion, a failed call, anything
        return {"status": "failed", "detail": _describe(exc, print_tb=True)}
    # check(candidate) returned normally: only now is the nonce read, and only this process has it.
    nonce = os.read(cfg["nonce_fd"], 4096).decode()
    os.close(cfg["nonce_fd"])
    return {"status": "passed", "proof": nonce}
