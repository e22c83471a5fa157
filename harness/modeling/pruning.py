"""Depth pruning: derive a student by keeping a subset of the teacher's decoder layers.

`derive_pruned` works on the checkpoint files, not on a loaded model: each safetensors shard is
read, the kept layers' tensors are renamed to their new consecutive indices, and the shard is
written back. Peak memory is one shard, so a 7B teacher can be pruned on a small machine, and a
model built from the result has correct per-layer state by construction (each attention module's
`layer_idx`, which indexes the KV cache, comes from its position). The config's
`num_hidden_layers` and per-layer `layer_types` are rewritten to match. Checkpoints without
safetensors fall back to `prune_model` on a loaded model.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import torch

from harness.errors import ConfigError
from harness.modeling.publish import PROVENANCE_FILE, publish_dir
from harness.paths import cache_dir

SAFE_SINGLE = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
_LAYER_KEY = re.compile(r"^(?P<prefix>(?:.+\.)?layers)\.(?P<idx>\d+)\.(?P<rest>.+)$")
# Files a checkpoint dir holds besides weights and config: copied verbatim (tokenizer, chat template...).
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack")


def num_layers_of(model_dir: str | os.PathLike) -> int:
    """The number of decoder layers in a checkpoint directory's config."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    return int(config.get_text_config().num_hidden_layers)


def validate_layers(layers: Sequence[int], n_layers: int, what: str = "keep_layers") -> list[int]:
    """Check a layer list against the teacher's depth; return it sorted (teacher order is kept)."""
    if not layers:
        raise ConfigError(f"{what} is empty; list at least one decoder layer index in [0, {n_layers - 1}]")
    if any(not isinstance(i, int) or isinstance(i, bool) for i in layers):
        raise ConfigError(f"{what} must hold integers, got {list(layers)}")
    bad = sorted(i for i in layers if not 0 <= i < n_layers)
    if bad:
        raise ConfigError(
            f"{what} has indices {bad} outside the teacher's {n_layers} layers (valid: 0..{n_layers - 1})"
        )
    dup = sorted(i for i, c in Counter(layers).items() if c > 1)
    if dup:
        raise ConfigError(f"{what} repeats layer indices {dup}")
    return sorted(layers)


def keep_from_drop(drop_layers: Sequence[int], n_layers: int) -> list[int]:
    """The complement of `drop_layers`; dropping every layer is an error."""
    drop = set(validate_layers(drop_layers, n_layers, "drop_layers"))
    keep = [i for i in range(n_layers) if i not in drop]
    if not keep:
        raise ConfigError(f"drop_layers removes all {n_layers} layers; keep at least one")
    return keep


def _dir_fingerprint(model_dir: Path) -> str:
    """Identity of a checkpoint dir for cache keys: path plus size/mtime of its config and weights."""
    parts = [str(model_dir.resolve())]
    for f in sorted(model_dir.iterdir()):
        if f.is_file() and (f.name == "config.json" or f.name.endswith(_WEIGHT_SUFFIXES) or f.name == SAFE_INDEX):
            st = f.stat()
            parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def pruned_cache_dir(teacher_dir: str | os.PathLike, keep_layers: Sequence[int]) -> Path:
    """Cache location of a pruned student, keyed by the teacher checkpoint and the kept layers."""
    teacher = Path(teacher_dir).resolve()
    key = hashlib.sha256(f"{_dir_fingerprint(teacher)}|{list(keep_layers)}".encode()).hexdigest()[:16]
    return cache_dir() / "models" / f"pruned-{teacher.name}-{len(keep_layers)}L-{key}"


def derive_pruned(teacher_dir: str | os.PathLike, keep_layers: Sequence[int], out_dir: str | os.PathLike) -> Path:
    """Write a checkpoint of the teacher with only `keep_layers` (teacher order) to `out_dir`.

    Reuses `out_dir` when it already holds this exact derivation; refuses one holding anything else.
    The tokenizer and generation config are copied, so the result loads like any HF checkpoint.
    """
    teacher = Path(teacher_dir).expanduser().resolve()
    if not (teacher / "config.json").is_file():
        raise ConfigError(f"teacher dir {str(teacher)!r} has no config.json; give a Hugging Face checkpoint directory")
    n_layers = num_layers_of(teacher)
    keep = validate_layers(list(keep_layers), n_layers)
    provenance = {
        "kind": "depth_pruned",
        "teacher_dir": str(teacher),
        "teacher_fingerprint": _dir_fingerprint(teacher),
        "teacher_layers": n_layers,
        "keep_layers": keep,
    }
    return publish_dir(out_dir, lambda tmp: _write_pruned(teacher, keep, tmp), provenance)


def _pruned_config(teacher: Path, keep: list[int]):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(teacher)
    text = config.get_text_config()
    text.num_hidden_layers = len(keep)
    layer_types = getattr(text, "layer_types", None)
    if layer_types:  # sliding/full attention per layer must follow its layer
        text.layer_types = [layer_types[i] for i in keep]
    return config


def _copy_side_files(teacher: Path, out: Path) -> None:
    for f in teacher.iterdir():
        if not f.is_file() or f.name.startswith("."):
            continue
        if f.name in ("config.json", SAFE_INDEX, PROVENANCE_FILE) or f.name.endswith(_WEIGHT_SUFFIXES):
            continue
        if f.name.endswith(".index.json"):  # index of a non-safetensors format
            continue
        shutil.copy2(f, out / f.name)


def _layer_prefix(keys: Iterable[str], n_layers: int) -> str:
    """The key prefix of the decoder layer stack (e.g. `model.layers`): the one with n_layers indices."""
    seen: dict[str, set[int]] = {}
    for key in keys:
        m = _LAYER_KEY.match(key)
        if m:
            seen.setdefault(m["prefix"], set()).add(int(m["idx"]))
    for prefix, idx in seen.items():
        if idx == set(range(n_layers)):
            return prefix
    raise ConfigError(f"cannot find a stack of {n_layers} decoder layers in the checkpoint (found {sorted(seen)})")


def _rename(key: str, prefix: str, new_index: dict[int, int]) -> str | None:
    """New key for a tensor, or None when it belongs to a dropped layer."""
    m = _LAYER_KEY.match(key)
    if not m or m["prefix"] != prefix:
        return key
    old = int(m["idx"])
    if old not in new_index:
        return None
    return f"{prefix}.{new_index[old]}.{m['rest']}"


def _write_pruned(teacher: Path, keep: list[int], out: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    config = _pruned_config(teacher, keep)
    teacher_layers = num_layers_of(teacher)
    if (teacher / SAFE_INDEX).is_file():
        index = json.loads((teacher / SAFE_INDEX).read_text(encoding="utf-8"))
        shards = sorted(set(index["weight_map"].values()))
    elif (teacher / SAFE_SINGLE).is_file():
        index, shards = None, [SAFE_SINGLE]
    else:  # e.g. pytorch_model.bin: prune a loaded model instead
        _write_pruned_via_model(teacher, keep, out)
        return

    all_keys: list[str] = []
    for shard in shards:
        with safe_open(str(teacher / shard), framework="pt") as fh:
            all_keys.extend(fh.keys())
    prefix = _layer_prefix(all_keys, teacher_layers)
    new_index = {old: new for new, old in enumerate(keep)}

    weight_map: dict[str, str] = {}
    total = 0
    for shard in shards:  # one shard in memory at a time
        tensors: dict[str, torch.Tensor] = {}
        with safe_open(str(teacher / shard), framework="pt") as fh:
            metadata = fh.metadata() or {}
            for key in fh.keys():
                new_key = _rename(key, prefix, new_index)
                if new_key is not None:
                    tensors[new_key] = fh.get_tensor(key)
        if not tensors:
            continue  # a shard holding only dropped layers disappears
        save_file(tensors, str(out / shard), metadata={**metadata, "format": "pt"})
        for key, t in tensors.items():
            weight_map[key] = shard
            total += t.numel() * t.element_size()
    if index is not None:
        new_idx = {"metadata": {**index.get("metadata", {}), "total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (out / SAFE_INDEX).write_text(json.dumps(new_idx, indent=2) + "\n", encoding="utf-8")
    config.save_pretrained(out)
    _copy_side_files(teacher, out)


def prune_model(model, keep_layers: Sequence[int]):
    """Prune a loaded causal LM in place (and return it): keep `keep_layers`, teacher order.

    Fixes what a decoder stack stores per position: `num_hidden_layers`, `layer_types`, and the
    `layer_idx` of every kept module (attention uses it to address its KV-cache slot; a stale
    index makes cached generation read another layer's keys). Re-ties embeddings when the config
    ties them.
    """
    text_config = model.config.get_text_config()
    backbone = model.get_decoder()
    layers = backbone.layers
    keep = validate_layers(list(keep_layers), len(layers))
    backbone.layers = torch.nn.ModuleList([layers[i] for i in keep])
    for new_idx, layer in enumerate(backbone.layers):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_idx
    text_config.num_hidden_layers = len(keep)
    if getattr(text_config, "layer_types", None):
        text_config.layer_types = [text_config.layer_types[i] for i in keep]
        if hasattr(backbone, "config"):
            backbone.config.layer_types = text_config.layer_types
    if getattr(text_config, "tie_word_embeddings", False):
        model.tie_weights()
    return model


def _write_pruned_via_model(teacher: Path, keep: list[int], out: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(teacher, dtype="auto")
    prune_model(model, keep)
    model.save_pretrained(out)
    _copy_side_files(teacher, out)  # tokenizer files; config.json is the pruned one just saved
