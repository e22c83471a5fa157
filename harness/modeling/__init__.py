"""Models: load a teacher or student from any supported source, derive pruned students, check vocabularies.

The one model API (DESIGN.md, section Models); each concern lives in its own submodule:

    resolve_model_dir(spec, teacher=None) -> Path
    load_model(spec, *, teacher=None, dtype=torch.float32, device="cpu") -> (model, tokenizer)
    load_tokenizer(model_dir) -> tokenizer (left padding, pad token set)
    convert_gguf(gguf_path, out_dir=None) -> Path
    derive_pruned(teacher_dir, keep_layers, out_dir) -> Path;  prune_model(model, keep_layers) -> model
    check_vocab_compat(teacher_tok, student_tok, teacher_model=None, student_model=None, *, allow_head_slice=False) -> int
    make_tiny_model(out_dir, *, vocab_size=512, hidden=32, layers=4, heads=4, seed=0, tie=True, ...) -> Path
"""

from harness.modeling.compat import check_vocab_compat, head_size
from harness.modeling.gguf import convert_gguf, converted_dir_for
from harness.modeling.loading import (
    LOCAL_ALTERNATIVES,
    MODEL_ALIASES,
    load_model,
    load_tokenizer,
    resolve_model_dir,
    resolve_name,
)
from harness.modeling.pruning import (
    derive_pruned,
    keep_from_drop,
    num_layers_of,
    prune_model,
    pruned_cache_dir,
    validate_layers,
)
from harness.modeling.tiny import make_tiny_model, make_tiny_tokenizer

__all__ = [
    "LOCAL_ALTERNATIVES",
    "MODEL_ALIASES",
    "check_vocab_compat",
    "convert_gguf",
    "converted_dir_for",
    "derive_pruned",
    "head_size",
    "keep_from_drop",
    "load_model",
    "load_tokenizer",
    "make_tiny_model",
    "make_tiny_tokenizer",
    "num_layers_of",
    "prune_model",
    "pruned_cache_dir",
    "resolve_model_dir",
    "resolve_name",
    "validate_layers",
]
