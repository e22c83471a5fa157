"""lm-eval's gsm8k protocol run offline on local JSONL with an in-memory tiny model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

pytest.importorskip("lm_eval")

from harness.evaluation.gsm8k import answers_match, extract_answer_with_rule  # noqa: E402
from harness.evaluation.gsm8k_lm_eval import (  # noqa: E402
    LOCAL_TASK_NAME,
    lm_eval_gsm8k_filters,
    lm_eval_gsm8k_task_yaml,
    run_lm_eval_gsm8k,
)

QUESTIONS = [f"Tom has {i} apples and buys {7 - i} more. How many apples does he have?" for i in range(1, 7)]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture(scope="module")
def gsm_dir(tmp_path_factory) -> Path:
    """6 train rows (few-shot pool) and 3 test rows; two test answers are 7, one is 9."""
    d = tmp_path_factory.mktemp("gsm8k")
    train = [{"question": q, "answer": "#### 7"} for q in QUESTIONS]
    test = [
        {"question": "Ann has 2 pears and buys 5 more. How many pears does she have?", "answer": "2 + 5 = 7\n#### 7"},
        {"question": "Bo has 3 cats and gets 4 more. How many cats does he have?", "answer": "3 + 4 = 7\n#### 7"},
        {"question": "Cy has 4 cups and buys 5 more. How many cups does he have?", "answer": "4 + 5 = 9\n#### 9"},
    ]
    _write_jsonl(d / "train.jsonl", train)
    _write_jsonl(d / "test.jsonl", test)
    return d


@pytest.fixture(scope="module")
def parrot_model():
    """A tiny Llama trained in a second to always answer ' #### 7' after 'Answer:'.

    A known, deterministic answer makes the expected scores exact (2/3 correct), which a random
    model could not provide.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    import random

    rng = random.Random(0)
    names, things = ["Tom", "Ann", "Bo", "Cy", "Di", "Ed"], ["apples", "pears", "cats", "cups", "pens", "hats"]
    pool = [f"{n} has {i} {t} and buys {9 - i} more. How many {t} does {n} have?"
            for n in names for t in things for i in range(1, 9)]
    docs = ["".join(f"Question: {q}\nAnswer: #### 7\n\n" for q in rng.sample(pool, 6)) for _ in range(8)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(docs, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: more threads only add contention on a busy 2-core box
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         bos_token_id=0, eos_token_id=1, pad_token_id=2)
    model = LlamaForCausalLM(config)
    batch = tokenizer(docs, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    try:
        for _ in range(100):
            loss = model(**batch, labels=labels).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval(), tokenizer


def test_task_yaml_points_at_local_files(tmp_path: Path, gsm_dir: Path) -> None:
    path = lm_eval_gsm8k_task_yaml(tmp_path / "tasks", gsm_dir / "test.jsonl", gsm_dir / "train.jsonl")
    spec = yaml.safe_load(Path(path).read_text())
    assert spec["task"] == LOCAL_TASK_NAME
    assert spec["dataset_path"] == "json" and "dataset_name" not in spec and "tag" not in spec
    assert spec["dataset_kwargs"]["data_files"] == {
        "train": str((gsm_dir / "train.jsonl").resolve()), "test": str((gsm_dir / "test.jsonl").resolve())}
    # Everything else is lm-eval's own task: 5-shot, its filters, its stop strings.
    assert spec["num_fewshot"] == 5
    assert [f["name"] for f in spec["filter_list"]] == ["strict-match", "flexible-extract"]
    assert "Question:" in spec["generation_kwargs"]["until"]


def test_run_lm_eval_gsm8k_offline_end_to_end(gsm_dir: Path, parrot_model, monkeypatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, tokenizer = parrot_model
    out = run_lm_eval_gsm8k(model, tokenizer, gsm_dir, limit=3, batch_size=2, max_gen_toks=8, log_samples=True)
    assert out["n"] == 3 and out["num_fewshot"] == 5
    assert out["strict-match"] == pytest.approx(2 / 3)
    assert out["flexible-extract"] == pytest.approx(2 / 3)
    # Our extractor reads lm-eval's raw generations the same way its strict filter does.
    for sample in out["samples"]:
        raw = sample["resps"][0][0]
        ours, rule = extract_answer_with_rule(raw)
        if sample["filter"] == "strict-match":
            assert rule == "hash_marker" and answers_match(ours, sample["filtered_resps"][0]), raw
    assert set(lm_eval_gsm8k_filters()) == {"strict-match", "flexible-extract"}


def test_run_lm_eval_gsm8k_missing_files(tmp_path: Path, parrot_model) -> None:
    model, tokenizer = parrot_model
    with pytest.raises(FileNotFoundError, match="test.jsonl"):
        run_lm_eval_gsm8k(model, tokenizer, tmp_path, limit=1)
