"""Is the Hugging Face Hub reachable? Answered in at most a couple of seconds, once per process.

Model and dataset loaders ask this before handing a Hub id to `huggingface_hub` / `datasets`,
because those libraries retry with long timeouts when the network is down: on an offline
machine a run must fail at once with a message naming the local alternatives, never hang.

The answer is "offline" when `HF_HUB_OFFLINE`, `TRANSFORMERS_OFFLINE` or `HF_DATASETS_OFFLINE`
is set to a true value, and otherwise comes from a TCP connect to the Hub endpoint (`HF_ENDPOINT`,
default https://huggingface.co) with a short timeout (`DISTILL_BENCH_HUB_TIMEOUT`, default 2 s).
"""

from __future__ import annotations

import os
import socket
import threading
from urllib.parse import urlparse

from harness.errors import HubUnavailableError

_TRUE = {"1", "true", "yes", "on"}
_probe_cache: dict[tuple[str, int], str | None] = {}
_probe_lock = threading.Lock()


def offline_env_reason() -> str | None:
    """The name of the environment variable that forces offline mode, if one is set."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return f"{var}={os.environ[var]}"
    return None


def hub_endpoint() -> tuple[str, int]:
    """Host and port of the configured Hub endpoint."""
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = url.port or (80 if url.scheme == "http" else 443)
    return url.hostname or "huggingface.co", port


def _probe(host: str, port: int, timeout: float) -> str | None:
    """Connect once; return None on success or a short reason on failure.

    getaddrinfo has no timeout of its own, so the whole probe runs in a daemon thread that we
    stop waiting for after `timeout` seconds (a hung DNS lookup then simply counts as offline).
    """
    result: list[str | None] = []

    def attempt() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(None)
        except Exception as exc:  # any failure means "not reachable"; never let the thread die noisily
            result.append(f"{type(exc).__name__}: {exc}")

    thread = threading.Thread(target=attempt, name="hub-probe", daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    if not result:
        return f"no answer from {host}:{port} within {timeout:g} s"
    return result[0]


def hub_unreachable_reason() -> str | None:
    """None when the Hub looks reachable, else why not (env flag or failed probe). Cached per endpoint."""
    env = offline_env_reason()
    if env:
        return f"offline mode is set ({env})"
    host, port = hub_endpoint()
    with _probe_lock:
        if (host, port) not in _probe_cache:
            timeout = float(os.environ.get("DISTILL_BENCH_HUB_TIMEOUT", "2"))
            _probe_cache[(host, port)] = _probe(host, port, timeout)
        reason = _probe_cache[(host, port)]
    return None if reason is None else f"cannot reach {host}:{port} ({reason})"


def hub_available() -> bool:
    return hub_unreachable_reason() is None


def require_hub(what: str, alternatives: str) -> None:
    """Raise HubUnavailableError naming `what` was wanted and the local `alternatives`."""
    reason = hub_unreachable_reason()
    if reason is not None:
        raise HubUnavailableError(f"{what} needs the Hugging Face Hub, but {reason}. {alternatives}")


def dataset_cached(hub_id: str) -> bool:
    """Is this Hub dataset in a local cache (so a `hub` source works offline)? Directory check only."""
    from pathlib import Path

    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    hub_cache = Path(os.environ.get("HF_HUB_CACHE", home / "hub"))
    ds_cache = Path(os.environ.get("HF_DATASETS_CACHE", home / "datasets"))
    org, _, name = hub_id.partition("/")
    return (hub_cache / f"datasets--{org}--{name}").is_dir() or any(ds_cache.glob(f"{org}___{name}*"))


def clear_probe_cache() -> None:
    """Forget earlier probe results (tests; or after the network came back)."""
    with _probe_lock:
        _probe_cache.clear()
