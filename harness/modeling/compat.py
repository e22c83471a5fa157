"""Can a teacher's logits be compared with a student's position by position, token by token?

Every objective compares the two distributions over the same token ids, so the tokenizers must
agree exactly (same token -> id map, same special tokens) and the lm_heads must emit the same
number of logits. Qwen2-7B (152,064 rows) and Qwen2-0.5B (151,936 rows) share a tokenizer of
151,646 tokens but pad their heads differently; we never slice silently, because slicing the
wrong side would quietly compare different tokens; the caller opts in with `allow_head_slice`.
"""

from __future__ import annotations

from typing import Any

from harness.errors import VocabMismatchError

_SPECIAL_ATTRS = ("bos_token", "eos_token", "pad_token", "unk_token")


def head_size(model: Any) -> int:
    """Rows of the model's output embedding (number of logits per position)."""
    head = model.get_output_embeddings()
    if head is not None and getattr(head, "weight", None) is not None:
        return int(head.weight.shape[0])
    return int(model.config.get_text_config().vocab_size)


def _vocab_diff(teacher_vocab: dict[str, int], student_vocab: dict[str, int], limit: int = 5) -> list[str]:
    """The first differing tokens, in teacher id order (then student-only tokens)."""
    diffs: list[str] = []
    for token, tid in sorted(teacher_vocab.items(), key=lambda kv: kv[1]):
        sid = student_vocab.get(token)
        if sid != tid:
            diffs.append(f"{token!r}: teacher id {tid}, student " + (f"id {sid}" if sid is not None else "absent"))
            if len(diffs) >= limit:
                return diffs
    for token, sid in sorted(student_vocab.items(), key=lambda kv: kv[1]):
        if token not in teacher_vocab:
            diffs.append(f"{token!r}: student id {sid}, teacher absent")
            if len(diffs) >= limit:
                break
    return diffs


def check_vocab_compat(
    teacher_tok: Any,
    student_tok: Any,
    teacher_model: Any | None = None,
    student_model: Any | None = None,
    *,
    allow_head_slice: bool = False,
) -> int:
    """Raise VocabMismatchError unless teacher and student logits index the same tokens.

    Returns the number of logit columns to compare: the common head size, or, with
    `allow_head_slice=True` and heads of different sizes that both cover the tokenizer,
    `len(tokenizer)` (the caller slices both sides' logits to that many columns).
    """
    t_vocab, s_vocab = teacher_tok.get_vocab(), student_tok.get_vocab()
    if t_vocab != s_vocab:
        diffs = _vocab_diff(t_vocab, s_vocab)
        raise VocabMismatchError(
            f"teacher and student tokenizers differ (teacher {len(t_vocab)} tokens, student {len(s_vocab)}); "
            f"first differences: {'; '.join(diffs)}. Distillation compares logits token by token, so both "
            "models must use the same tokenizer: pick a student from the teacher's family or derive one "
            "(`student: {derive_from: teacher, keep_layers: [...]}`)"
        )
    for attr in _SPECIAL_ATTRS:
        t, s = getattr(teacher_tok, attr, None), getattr(student_tok, attr, None)
        if t != s:
            raise VocabMismatchError(f"special token {attr} differs: teacher {t!r}, student {s!r}")
    t_added = {str(v): k for k, v in getattr(teacher_tok, "added_tokens_decoder", {}).items()}
    s_added = {str(v): k for k, v in getattr(student_tok, "added_tokens_decoder", {}).items()}
    if t_added != s_added:
        only_t = sorted(set(t_added) - set(s_added))[:5]
        only_s = sorted(set(s_added) - set(t_added))[:5]
        raise VocabMismatchError(f"added/special tokens differ: teacher-only {only_t}, student-only {only_s}")

    n_tok = len(teacher_tok)
    if teacher_model is None or student_model is None:
        return n_tok
    t_head, s_head = head_size(teacher_model), head_size(student_model)
    if t_head == s_head:
        return t_head
    if t_head >= n_tok and s_head >= n_tok:
        if allow_head_slice:
            return n_tok
        raise VocabMismatchError(
            f"lm_head sizes differ: teacher {t_head} logits, student {s_head}; both cover the tokenizer's "
            f"{n_tok} tokens, so the extra rows are padding. The harness does not slice silently: compare "
            f"only the first {n_tok} logits explicitly (check_vocab_compat(..., allow_head_slice=True) and "
            f"slice both logits to [..., :{n_tok}]), or resize a head with model.resize_token_embeddings({n_tok})"
        )
    raise VocabMismatchError(
        f"lm_head sizes differ: teacher {t_head}, student {s_head}, and at least one is smaller than the "
        f"tokenizer ({n_tok} tokens): that model cannot produce logits for every token; use a matching checkpoint"
    )
