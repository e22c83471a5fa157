"""Resume checkpoints of sharded runs (`train.sharding: fsdp`): each rank writes and reads only its
own shard of the weights and AdamW moments, with torch.distributed.checkpoint (DCP).

Gathering the optimizer state on rank 0, as the unsharded format (checkpoint.py) does, would need
the whole of it in one process: the very memory a sharded run exists to avoid (AdamW: ~112 GB for
7B). The rest is checkpoint.py's: same directory name, same replace discipline
(`commit_checkpoint`), same TrainState, RNG states, telemetry copy and CRC-32 manifest. Layout:

    checkpoint/
      dcp/               DCP: `.metadata` and each rank's `__<rank>_<n>.distcp` (its weights and moments)
      rng-<rank>.pt      that rank's RNG states (python, numpy, torch, cuda)
      scheduler.pt       the LR scheduler (the same on every rank: rank 0 writes it)
      state.json         TrainState (step, telemetry rows, counters), as unsharded
      telemetry.jsonl    the telemetry rows up to the step, as unsharded
      sharded.json       {"format", "world_size"}: marks the format (checkpoint.SHARDED_MARKER)
      manifest.json      CRC-32 and size of every file above, by relative path; written last

Writing (collective): rank 0 makes a fresh temp dir `.checkpoint-*`; every rank writes its shard and
RNG file into it; each rank checksums 1/N of the files (nobody reads everything); rank 0 writes the
manifest and renames the dir into place. A kill at any moment leaves the previous or the new
complete checkpoint; a killed save's temp dir is removed by the next save or resume.

Reading (collective): rank 0 checks the structure (files, sizes, telemetry rows), every rank
checksums its 1/N, and all ranks take the same decision; a damaged checkpoint is discarded for
`.old` or step 0, each event recorded, exactly as unsharded. Everything is read into fresh buffers
before anything is applied, so a checkpoint that fails to load leaves the model as it was.

Process count: DCP records every tensor's global shape and each shard's offsets, so a run resumed
with another number of processes reads its own new slices (resharding). Per-rank RNG streams have
no counterpart across process counts: rank r continues rank (r mod N)'s stream, and the resume
event says so. (A sharded step draws no random numbers from them except in dropout: teacher
sampling reseeds per batch.) The run directory must be on a filesystem every rank sees (always so
on one node).
"""

from __future__ import annotations

import io
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from harness.errors import ConfigError
from harness.io import atomic_write_bytes, atomic_write_json, disk_error, read_json
from harness.training.checkpoint import (CHECKPOINT_DIRNAME, CHECKSUM, MANIFEST, OLD_DIRNAME, SHARDED_MARKER,
                                         TELEMETRY_COPY, TMP_PREFIX, Resumed, TrainState, commit_checkpoint,
                                         count_rows, file_checksum, file_digest, fsync_dir, remove_orphans,
                                         resume_format_problem, rng_state, set_rng_state)
from harness.training.distributed import DistContext

FORMAT = "torch.distributed.checkpoint"
DCP_DIRNAME = "dcp"
SCHEDULER_FILE = "scheduler.pt"
STATE_FILE = "state.json"


def rng_file(rank: int) -> str:
    return f"rng-{rank}.pt"


class ShardedCheckpointError(RuntimeError):
    """Another rank's part of a collective checkpoint step failed (its own error is raised there)."""


def save_sharded_checkpoint(run_dir: Path, model: torch.nn.Module, optimizer, scheduler, state: TrainState,
                            dist: DistContext, telemetry_path: Path | None = None) -> Path:
    """Write `run_dir/checkpoint` from every rank's shard. Collective: every rank calls it.

    A write that fails for lack of space or permission raises DiskError (path, bytes, how to resume)
    on the rank it happened on and ShardedCheckpointError on the others; the previous checkpoint is
    left as it was.
    """
    from torch.distributed.checkpoint import CheckpointException, FileSystemWriter, save
    from torch.distributed.checkpoint.state_dict import get_state_dict

    run_dir = Path(run_dir)
    final = run_dir / CHECKPOINT_DIRNAME
    resume = f"rerun the same command; training resumes from the previous checkpoint in {final}"
    model_sd, optim_sd = get_state_dict(model, optimizer)  # this rank's shards (DTensors), no gather
    # A tied parameter (embeddings = LM head) is listed under both names: stored once.
    model_sd = {k: v for k, v in model_sd.items() if k not in tied_aliases(model)}
    needed = 3 * sum(_local(t).numel() * _local(t).element_size() for t in model_sd.values()
                     if isinstance(t, torch.Tensor))  # weights + two AdamW moments, this rank's share
    made: list[str] = []

    def make_tmp() -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_orphans(run_dir)  # temp dirs of saves killed midway
        made.append(tempfile.mkdtemp(dir=run_dir, prefix=TMP_PREFIX))

    _together(dist, make_tmp if dist.is_main else None, run_dir, needed, resume)
    tmp = Path(dist.broadcast_object(made[0] if made else None))
    try:
        try:
            save({"model": model_sd, "optim": optim_sd}, storage_writer=FileSystemWriter(tmp / DCP_DIRNAME))
        except CheckpointException as exc:  # raised on every rank when any rank's write failed
            cause = _os_error(exc)
            if cause is not None:
                raise disk_error(tmp, cause, needed, resume) from exc
            raise ShardedCheckpointError(f"writing the sharded checkpoint in {tmp} failed: {exc}") from exc

        def small_files() -> None:
            atomic_write_bytes(tmp / rng_file(dist.rank), _torch_bytes(rng_state()))
            if dist.is_main:
                atomic_write_bytes(tmp / SCHEDULER_FILE, _torch_bytes({"scheduler": scheduler.state_dict()}))
                atomic_write_json(tmp / STATE_FILE, state.to_json())
                if telemetry_path is not None and Path(telemetry_path).is_file():
                    atomic_write_bytes(tmp / TELEMETRY_COPY, Path(telemetry_path).read_bytes())
                atomic_write_json(tmp / SHARDED_MARKER, {"format": FORMAT, "world_size": dist.world_size})

        _together(dist, small_files, tmp, needed, resume)
        # Every file is complete now (the gather above waited for all ranks): each rank checksums
        # its 1/N of them in parallel, rank 0 collects the digests into the manifest.
        names = _relative_files(tmp)
        slices = _together(dist, lambda: {n: file_digest(tmp / n) for n in names[dist.rank::dist.world_size]},
                           tmp, needed, resume)

        def commit() -> None:
            files = {k: v for part in slices for k, v in part.items()}
            atomic_write_json(tmp / MANIFEST, {"step": state.step, "files": files})
            fsync_dir(tmp / DCP_DIRNAME)
            fsync_dir(tmp)
            commit_checkpoint(run_dir, tmp)

        _together(dist, commit if dist.is_main else None, tmp, needed, resume)
    except BaseException:
        if dist.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def load_latest_sharded(run_dir: Path, model: torch.nn.Module, optimizer, scheduler, dist: DistContext) -> Resumed:
    """Load the newest good sharded checkpoint into this rank's shards; discard damaged ones.

    Collective. The counterpart of `checkpoint.load_latest`: same candidates (`checkpoint`, then
    `.old`), same events, same Resumed; rank 0 alone deletes anything.
    """
    run_dir = Path(run_dir)
    problem = resume_format_problem(run_dir, sharded=True)  # an unsharded checkpoint: refused, not discarded
    if problem:
        raise ConfigError(problem)
    events: list[str] = []
    if dist.is_main:
        remove_orphans(run_dir)
    for name in (CHECKPOINT_DIRNAME, OLD_DIRNAME):
        cand = run_dir / name
        verdict = dist.broadcast_object(inspect_checkpoint(cand) if dist.is_main else None)
        if verdict is None:
            continue
        why = verdict.get("why")
        if why is None:
            names = sorted(verdict["files"])
            mine = names[dist.rank::dist.world_size]
            problems = dist.all_gather_object(_checksum_problem(cand, mine, verdict["files"]))
            why = next((p for p in problems if p), None)
        if why is None:
            loaded, errors = _load(cand, model, optimizer, scheduler, dist, verdict["world_size"])
            why = next((e for e in errors if e), None)
            if why is None:
                state, telemetry = loaded
                if dist.is_main and name == CHECKPOINT_DIRNAME and (run_dir / OLD_DIRNAME).exists():
                    shutil.rmtree(run_dir / OLD_DIRNAME)  # superseded by the good newer one
                if events:
                    events.append(f"resumed from {name} at step {state.step}")
                if verdict["world_size"] != dist.world_size:
                    events.append(
                        f"resumed with {dist.world_size} processes from a checkpoint written by "
                        f"{verdict['world_size']}: weights and optimizer state resharded; rank r continues "
                        f"rank (r mod {verdict['world_size']})'s random-number stream")
                return Resumed(state, cand, events, telemetry)
        msg = f"checkpoint {cand} damaged: {why}; discarded"
        if dist.is_main:
            print(f"warning: {msg}", file=sys.stderr)
            shutil.rmtree(cand, ignore_errors=True)
        events.append(msg)
        dist.barrier()  # nobody looks at the next candidate while rank 0 is still deleting this one
    if events:
        events.append("no usable checkpoint left: training restarts from step 0")
        if dist.is_main:
            print(f"warning: {events[-1]} in {run_dir}", file=sys.stderr)
    return Resumed(None, None, events, None)


def inspect_checkpoint(path: Path) -> dict[str, Any] | None:
    """The cheap half of verification (no checksums): None when `path` does not exist, else
    {"why": reason} or {"files": manifest entries, "world_size": N}. Local: any process may call it."""
    if not path.exists():
        return None
    try:
        marker = read_json(path / SHARDED_MARKER)
        world = int(marker["world_size"])
        if marker.get("format") != FORMAT:
            return {"why": f"{SHARDED_MARKER} names format {marker.get('format')!r}, not {FORMAT!r}"}
    except (OSError, ValueError, KeyError, TypeError):
        return {"why": f"{SHARDED_MARKER} missing or unreadable"}
    try:
        files = read_json(path / MANIFEST)["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return {"why": "manifest.json missing or unreadable"}
    required = [SHARDED_MARKER, STATE_FILE, SCHEDULER_FILE, f"{DCP_DIRNAME}/.metadata",
                *(rng_file(r) for r in range(world))]
    unlisted = [f for f in required if f not in files]
    if unlisted:
        return {"why": f"manifest.json does not list {', '.join(unlisted)}"}
    for rel, meta in files.items():
        p = path / rel
        if not p.is_file():
            return {"why": f"missing {rel}"}
        if p.stat().st_size != meta.get("bytes"):
            return {"why": f"{rel} has {p.stat().st_size} bytes, manifest says {meta.get('bytes')}"}
    try:
        state = TrainState(**read_json(path / STATE_FILE))
    except (OSError, ValueError, TypeError):
        return {"why": "state.json unreadable"}
    copy = path / TELEMETRY_COPY
    rows = count_rows(copy.read_bytes()) if copy.is_file() else 0
    if rows != state.telemetry_rows:
        return {"why": f"its telemetry copy has {rows} rows, its state {state.telemetry_rows}"}
    return {"files": files, "world_size": world}


def find_sharded_checkpoint(run_dir: Path) -> Path | None:
    """The newest sharded checkpoint whose files are all there with their manifest sizes (no checksums)."""
    for name in (CHECKPOINT_DIRNAME, OLD_DIRNAME):
        verdict = inspect_checkpoint(Path(run_dir) / name)
        if verdict is not None and "why" not in verdict:
            return Path(run_dir) / name
    return None


def _load(path: Path, model, optimizer, scheduler, dist: DistContext, saved_world: int):
    """Read everything, then apply. Returns ((state, telemetry bytes), per-rank errors)."""
    from torch.distributed.checkpoint import CheckpointException, FileSystemReader, load
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    # get_state_dict gives a fresh AdamW its state (one step at lr 0) so the load has shapes to
    # fill; a fallback to step 0 clears it again below, leaving the optimizer as new.
    model_sd, optim_sd = get_state_dict(model, optimizer)
    # Fresh buffers with the same sharding (one more copy of this rank's share, during the load
    # only): a checkpoint that fails half-way through the read leaves the live weights untouched.
    aliases = tied_aliases(model)
    model_buf = _empty_like({k: v for k, v in model_sd.items() if k not in aliases})
    optim_buf = _empty_like(optim_sd)
    read: dict[str, Any] = {}
    error = None
    try:
        load({"model": model_buf, "optim": optim_buf}, storage_reader=FileSystemReader(path / DCP_DIRNAME))
    except CheckpointException as exc:  # raised on every rank when any rank's read failed
        first = next(iter(exc.failures.values()), (exc, None))[0]
        error = f"does not load (rank {next(iter(exc.failures), '?')}: {type(first).__name__}: {str(first)[:120]})"
    except Exception as exc:  # noqa: BLE001 - e.g. unreadable .metadata, raised before any collective read
        error = f"does not load ({type(exc).__name__}: {str(exc)[:120]})"
    if error is None:
        try:
            read["scheduler"] = torch.load(path / SCHEDULER_FILE, map_location="cpu", weights_only=False)["scheduler"]
            read["rng"] = torch.load(path / rng_file(dist.rank % saved_world), map_location="cpu", weights_only=False)
            read["state"] = TrainState(**read_json(path / STATE_FILE))
            copy = path / TELEMETRY_COPY
            read["telemetry"] = copy.read_bytes() if dist.is_main and copy.is_file() else None
        except Exception as exc:  # noqa: BLE001 - any unreadable file means this checkpoint is unusable
            error = f"does not load ({type(exc).__name__}: {str(exc)[:120]})"
    errors = dist.all_gather_object(error)
    if any(errors):
        optimizer.state.clear()  # undo get_state_dict's initialization: the optimizer is as new again
        return None, errors
    model_buf.update({alias: model_buf[kept] for alias, kept in aliases.items()})
    set_state_dict(model, optimizer, model_state_dict=model_buf, optim_state_dict=optim_buf)
    scheduler.load_state_dict(read["scheduler"])
    set_rng_state(read["rng"])
    return (read["state"], read["telemetry"]), errors


def tied_aliases(model: torch.nn.Module) -> dict[str, str]:
    """{alias: name} for parameters registered under several names (a tied LM head), `name` being
    the one `named_parameters()` keeps, as HF checkpoints and the unsharded format store it."""
    first: dict[int, str] = {}
    aliases = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            aliases[name] = first[id(p)]
        else:
            first[id(p)] = name
    return aliases


def _checksum_problem(path: Path, names: list[str], files: dict[str, dict[str, Any]]) -> str | None:
    for rel in names:
        try:
            if file_checksum(path / rel) != files[rel].get(CHECKSUM):
                return f"{rel} does not match its {CHECKSUM} checksum in manifest.json"
        except OSError as exc:
            return f"{rel} unreadable ({exc.strerror or exc})"
    return None


def _together(dist: DistContext, fn: Callable[[], Any] | None, where: Path, needed: int, resume: str) -> list[Any]:
    """Run this rank's part of a collective step; every rank learns whether all parts succeeded.

    Without this, a rank whose write failed would raise alone while the others wait for it in the
    next collective until the process group's timeout (hours). Returns every rank's result.
    """
    result, error = None, None
    try:
        result = fn() if fn is not None else None
    except BaseException as exc:  # noqa: BLE001 - re-raised below, after the other ranks are told
        error = exc
    outcomes = dist.all_gather_object((None if error is None else f"{type(error).__name__}: {error}", result))
    if error is not None:
        if isinstance(error, OSError) and not isinstance(error, FileNotFoundError):
            raise disk_error(where, error, needed, resume) from error
        raise error
    failed = [(r, msg) for r, (msg, _) in enumerate(outcomes) if msg is not None]
    if failed:
        r, msg = failed[0]
        raise ShardedCheckpointError(f"rank {r} could not write its part of the checkpoint in {where}: {msg}")
    return [res for _, res in outcomes]


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError behind a failed write (DCP wraps each rank's in CheckpointException.failures)."""
    if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):
        return exc
    for inner, _trace in getattr(exc, "failures", {}).values():
        found = _os_error(inner)
        if found is not None:
            return found
    cause = exc.__cause__ or exc.__context__
    return _os_error(cause) if cause is not None and cause is not exc else None


def _relative_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)


def _torch_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def _empty_like(tree: Any) -> Any:
    if isinstance(tree, torch.Tensor):
        return torch.empty_like(tree)
    if isinstance(tree, dict):
        return {k: _empty_like(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_empty_like(v) for v in tree]
    return tree
