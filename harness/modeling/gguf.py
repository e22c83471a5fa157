"""GGUF files -> clean Hugging Face checkpoints, converted once and cached.

transformers can read a GGUF directly (`from_pretrained(dir, gguf_file=name)`), but it
de-quantizes every tensor on each load (~16 s for SmolLM2-135M) and leaves GGUF quantization
metadata in the config, which later confuses `save_pretrained`, PEFT and dtype handling. We load it
once, copy the weights into a freshly constructed model built from a cleaned config, and save a
standard safetensors checkpoint (plus tokenizer and generation config) under
`cache_dir()/models/<stem>-<key>/`, keyed by the file's name, size and mtime.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import torch

from harness.errors import ConfigError
from harness.modeling.publish import publish_dir
from harness.paths import cache_dir

log = logging.getLogger(__name__)

# Bump when the conversion output changes, so stale cached conversions are not reused.
CONVERSION_VERSION = 1

# Config keys that describe the GGUF source rather than the model.
_GGUF_ONLY_CONFIG_KEYS = ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version")


def gguf_cache_key(gguf_path: Path) -> str:
    """Cheap identity of a GGUF file (name, size, mtime): hashing 100s of MB would slow every load."""
    st = gguf_path.stat()
    raw = f"{gguf_path.name}|{st.st_size}|{st.st_mtime_ns}|v{CONVERSION_VERSION}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def converted_dir_for(gguf_path: Path) -> Path:
    """Where the converted checkpoint of `gguf_path` lives in the cache."""
    stem = gguf_path.name[: -len(".gguf")] if gguf_path.name.endswith(".gguf") else gguf_path.name
    return cache_dir() / "models" / f"{stem}-{gguf_cache_key(gguf_path)}"


def convert_gguf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> Path:
    """Return a directory holding the GGUF model as a clean HF checkpoint, converting it if needed."""
    path = Path(gguf_path).expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"GGUF file {str(path)!r} not found; give an existing .gguf path")
    target = Path(out_dir) if out_dir is not None else converted_dir_for(path)
    st = path.stat()
    provenance = {
        "kind": "gguf_conversion",
        "version": CONVERSION_VERSION,
        "source": str(path),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
    }
    return publish_dir(target, lambda tmp: _convert_into(path, tmp), provenance)


def _clean_config(config):
    """A new config of the same class without GGUF metadata (quantization_config etc.)."""
    data = config.to_dict()
    for key in _GGUF_ONLY_CONFIG_KEYS:
        data.pop(key, None)
    data["dtype"] = "float32"
    clean = type(config).from_dict(data)
    return clean


def _convert_into(gguf_path: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to a Hugging Face checkpoint (one-time, cached)", gguf_path)
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    source = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = _clean_config(source.config)
    config.architectures = [type(source).__name__]
    model = type(source)(config)  # fresh construction: nothing of the GGUF loader's state survives
    missing, unexpected = model.load_state_dict(source.state_dict(), strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"GGUF conversion of {gguf_path}: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    gen = model.generation_config
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            setattr(gen, attr, value)
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    _verify_tokenizer_round_trip(tokenizer, out)


def _verify_tokenizer_round_trip(original, out: Path) -> None:
    """Refuse a conversion whose saved tokenizer lost its chat template or special tokens."""
    from transformers import AutoTokenizer

    reloaded = AutoTokenizer.from_pretrained(out)
    checks = {
        "chat_template": (original.chat_template, reloaded.chat_template),
        "eos_token": (original.eos_token, reloaded.eos_token),
        "pad_token": (original.pad_token, reloaded.pad_token),
        "bos_token": (original.bos_token, reloaded.bos_token),
        "vocab size": (len(original), len(reloaded)),
    }
    bad = {k: v for k, v in checks.items() if v[0] != v[1]}
    if bad:
        raise RuntimeError(f"tokenizer changed when saved to {out}: {bad}")
    probe = "Q: 12 + 30 = ?\n\nA: 42 <|im_end|>"
    if original(probe).input_ids != reloaded(probe).input_ids:
        raise RuntimeError(f"tokenizer saved to {out} encodes differently from the GGUF tokenizer")
