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

# name -> submodule. Resolved on first use (PEP 562): importing a light submodule (batching, compat)
# or asking for a model path must not import transformers' model classes (a dry run loads none).
_EXPORTS = {
    "check_vocab_compat": "compat", "head_size": "compat",
    "convert_gguf": "gguf", "converted_dir_for": "gguf",
    "LOCAL_ALTERNATIVES": "loading", "MODEL_ALIASES": "loading", "load_model": "loading", "load_tokenizer": "loading",
    "resolve_model_dir": "loading", "resolve_name": "loading",
    "derive_pruned": "pruning", "keep_from_drop": "pruning", "num_layers_of": "pruning", "prune_model": "pruning",
    "pruned_cache_dir": "pruning", "validate_layers": "pruning",
    "make_tiny_model": "tiny", "make_tiny_tokenizer": "tiny",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'harness.modeling' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"harness.modeling.{_EXPORTS[name]}"), name)
    globals()[name] = value  # later lookups skip this function (and monkeypatching works as on any module)
    return value
