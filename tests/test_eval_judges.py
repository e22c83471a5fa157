"""Pairwise judges: verdict parsing, the ROUGE judge, a local-model judge and the HTTP judge
against a fake OpenAI-compatible server on 127.0.0.1 (no other address is ever contacted)."""

from __future__ import annotations

import json

import pytest
import torch

from tests.fake_openai import FakeOpenAI, completion

from harness.evaluation.judges import (
    HFModelJudge,
    Judge,
    JudgeError,
    OpenAICompatibleJudge,
    RougeJudge,
    load_judge_prompt,
    parse_verdict,
)

DIALOGUE = "#Person1#: Are you coming to the party on Friday?\n#Person2#: Yes, I'll bring a cake."
GOOD = "Person2 will come to the party on Friday and bring a cake."
BAD = "They talk about the weather."
REFS = ["#Person2# will go to the party on Friday and bring a cake.", "#Person2# agrees to come and bring cake."]


@pytest.mark.parametrize(
    "reply, verdict",
    [
        ("A", "A"), ("B", "B"), ("tie", "tie"), ("Tie.", "tie"), ("b", "B"), ("a", "A"),
        ("**B**", "B"), ("Summary A", "A"), ("Verdict: B", "B"), ("[[A]]", "A"),
        ("A. It is more faithful.", "A"), ("Summary B is better than summary A.", "B"),
        ("B is better than A", "B"), ("It's a tie.", "tie"), ("Answer: tie", "tie"),
        ("", "malformed"), ("   ", "malformed"), (None, "malformed"), ("I cannot decide.", "malformed"),
        ("A and B are both fine", "malformed"), ("Apple", "malformed"),
        ("Verdict: A\nFinal answer: B", "malformed"),  # contradictory
    ],
)
def test_parse_verdict(reply: str | None, verdict: str) -> None:
    assert parse_verdict(reply) == verdict


def test_prompt_is_data_with_the_papers_criteria() -> None:
    prompt = load_judge_prompt()
    text = prompt.render_user("D {braces} ok", "S1", "S2")
    for word in ("Faithfulness", "Coverage", "Clarity", "conciseness", "A, B, or tie"):
        assert word in text
    assert "D {braces} ok" in text and "Summary A:\nS1" in text and "Summary B:\nS2" in text


# ---------------------------------------------------------------- ROUGE judge


def test_rouge_judge() -> None:
    judge = RougeJudge()
    assert isinstance(judge, Judge)
    assert judge.judge(DIALOGUE, GOOD, BAD, references=REFS) == "A"
    assert judge.judge(DIALOGUE, BAD, GOOD, references=REFS) == "B"
    assert judge.judge(DIALOGUE, GOOD, GOOD, references=REFS) == "tie"
    with pytest.raises(ValueError, match="references"):
        judge.judge(DIALOGUE, GOOD, BAD)


# ---------------------------------------------------------------- local model judge


@pytest.fixture(scope="module")
def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([load_judge_prompt().user, DIALOGUE, GOOD, BAD, "A B tie"], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


class _ScriptedModel(torch.nn.Module):
    """Stands in for a causal LM: `generate` appends the token ids of a fixed reply."""

    def __init__(self, tokenizer, reply: str) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.reply_ids = tokenizer(reply, add_special_tokens=False)["input_ids"]
        self.seen: list[torch.Tensor] = []

    def generate(self, input_ids, attention_mask=None, max_new_tokens=8, do_sample=False, pad_token_id=None):
        assert do_sample is False
        self.seen.append(input_ids)
        extra = torch.tensor([self.reply_ids[:max_new_tokens]])
        return torch.cat([input_ids, extra], dim=1)


@pytest.mark.parametrize("reply, verdict", [(" B", "B"), (" tie", "tie"), (" zzz", "malformed")])
def test_hf_model_judge_parses_generation(tiny_tokenizer, reply: str, verdict: str) -> None:
    model = _ScriptedModel(tiny_tokenizer, reply)
    judge = HFModelJudge(model, tiny_tokenizer)
    assert judge.judge(DIALOGUE, GOOD, BAD) == verdict
    prompt = tiny_tokenizer.decode(model.seen[0][0])
    assert "Summary A:" in prompt and GOOD in prompt and prompt.rstrip().endswith("Verdict:")


def test_hf_model_judge_uses_chat_template(tiny_tokenizer) -> None:
    tokenizer = tiny_tokenizer.__class__(tokenizer_object=tiny_tokenizer.backend_tokenizer, eos_token="</s>",
                                         pad_token="<pad>")
    tokenizer.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                               "{% if add_generation_prompt %}<assistant>{% endif %}")
    judge = HFModelJudge(_ScriptedModel(tokenizer, "A"), tokenizer)
    assert judge.use_chat_template
    text = judge.render(DIALOGUE, GOOD, BAD)
    assert text.startswith("<system>") and text.endswith("<assistant>")
    assert judge.judge(DIALOGUE, GOOD, BAD) == "A"


def test_hf_model_judge_with_a_real_tiny_llama(tiny_tokenizer) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
                         bos_token_id=0, eos_token_id=1, pad_token_id=2)
    judge = HFModelJudge(LlamaForCausalLM(config).eval(), tiny_tokenizer, max_new_tokens=4)
    assert judge.judge(DIALOGUE, GOOD, BAD) in ("A", "B", "tie", "malformed")
    assert isinstance(judge.last_reply, str)


# ---------------------------------------------------------------- OpenAI-compatible HTTP judge


def test_http_judge_retries_503_then_answers(monkeypatch) -> None:
    monkeypatch.setenv("FAKE_JUDGE_KEY", "sk-test")
    delays: list[float] = []
    script = lambda i: (503, b'{"error": "busy"}') if i <= 2 else (200, completion("B"))  # noqa: E731
    with FakeOpenAI(script) as fake:
        judge = OpenAICompatibleJudge(fake.url, "judge-model", api_key_env="FAKE_JUDGE_KEY", timeout=5,
                                      max_retries=4, backoff=0.5, sleep=delays.append)
        assert judge.judge(DIALOGUE, GOOD, BAD) == "B"
    assert judge.attempts == 3 and len(fake.requests) == 3
    assert len(delays) == 2 and 0.5 <= delays[0] < 0.6 and 1.0 <= delays[1] < 1.2  # exponential backoff
    request = fake.requests[-1]
    assert request["path"] == "/v1/chat/completions"
    assert request["body"]["model"] == "judge-model" and request["body"]["temperature"] == 0
    assert GOOD in request["body"]["messages"][1]["content"]
    assert fake.headers[-1]["Authorization"] == "Bearer sk-test"


def test_http_judge_429_honours_retry_after_and_v1_base_url() -> None:
    delays: list[float] = []

    def script(i: int) -> tuple[int, bytes]:
        return (429, b"slow down") if i == 1 else (200, completion("Verdict: A"))

    with FakeOpenAI(script) as fake:
        judge = OpenAICompatibleJudge(fake.url + "/v1/", "m", timeout=5, backoff=3.0, sleep=delays.append)
        assert judge.judge(DIALOGUE, GOOD, BAD) == "A"
    assert fake.requests[0]["path"] == "/v1/chat/completions"
    assert len(delays) == 1 and delays[0] >= 3.0


@pytest.mark.parametrize(
    "body",
    [b"this is not json", b'{"choices": []}', b'{"unexpected": true}', completion("I refuse to judge.")],
    ids=["not-json", "no-choices", "wrong-shape", "unparsable-verdict"],
)
def test_http_judge_garbage_is_malformed(body: bytes) -> None:
    with FakeOpenAI(lambda i: (200, body)) as fake:
        judge = OpenAICompatibleJudge(fake.url, "m", timeout=5, sleep=lambda s: None)
        assert judge.judge(DIALOGUE, GOOD, BAD) == "malformed"
        assert judge.attempts == 1


def test_http_judge_gives_up_after_retries() -> None:
    with FakeOpenAI(lambda i: (500, b"boom")) as fake:
        judge = OpenAICompatibleJudge(fake.url, "m", timeout=5, max_retries=2, sleep=lambda s: None)
        with pytest.raises(JudgeError, match="3 attempts.*HTTP 500"):
            judge.judge(DIALOGUE, GOOD, BAD)
    assert len(fake.requests) == 3


def test_http_judge_client_error_is_not_retried() -> None:
    with FakeOpenAI(lambda i: (401, b'{"error": "bad key"}')) as fake:
        judge = OpenAICompatibleJudge(fake.url, "m", timeout=5, sleep=lambda s: None)
        with pytest.raises(JudgeError, match="HTTP 401"):
            judge.judge(DIALOGUE, GOOD, BAD)
    assert len(fake.requests) == 1


def test_http_judge_connection_refused_is_retried() -> None:
    import socket

    with socket.socket() as s:  # find a loopback port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    delays: list[float] = []
    judge = OpenAICompatibleJudge(f"http://127.0.0.1:{port}", "m", timeout=2, max_retries=2, backoff=0.1,
                                  sleep=delays.append)
    with pytest.raises(JudgeError, match="3 attempts"):
        judge.judge(DIALOGUE, GOOD, BAD)
    assert len(delays) == 2
