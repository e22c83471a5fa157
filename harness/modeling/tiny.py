"""Tiny random Llama models with a real ChatML tokenizer: the fixture every unit test builds on.

The tokenizer is a byte-level BPE trained in memory on a fixed corpus, so any text encodes (no
unknown tokens), digits, code and dialogue markup get sensible merges, and the same arguments
always give byte-identical files. Special tokens mirror SmolLM2: `<|im_start|>` / `<|im_end|>`,
eos == pad == `<|im_end|>`, and a ChatML chat template.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

# ChatML as SmolLM2 writes it, minus its default system prompt (keeps tiny prompts short).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Fixed training text for the BPE: arithmetic word problems, dialogue markup, Python and prose,
# so tests on every task see plausible token lengths. Changing it changes every tiny tokenizer.
TINY_CORPUS: tuple[str, ...] = (
    "Q: Janet has 16 eggs. She eats 3 and bakes with 4. How many are left? \n\nA: 16 - 3 - 4 = 9\n#### 9",
    "Q: A shop sells 25 pens at $2 each. How much money does it make?\n\nA: 25 * 2 = 50\n#### 50",
    "Tom buys 12 apples and gives 5 to Anna. Then he buys 7 more. 12 - 5 + 7 = 14 apples.",
    "The answer is 1, 2, 3, 4, 5, 6, 7, 8, 9, 0. 10% of 200 is 20; 3/4 of 100 is 75.",
    "#Person1#: Hello, how are you doing today?\n#Person2#: I am fine, thank you. And you?",
    "#Person1#: Could you help me find the train station?\n#Person2#: Sure, go straight and turn left.",
    "Summary: #Person1# asks #Person2# for directions to the station.",
    "Summarize the following dialogue.\n\nSummary: They talk about the weather and plan a trip.",
    "def add(a, b):\n    return a + b\n",
    "def is_even(n: int) -> bool:\n    \"\"\"Return True if n is even.\"\"\"\n    return n % 2 == 0\n",
    "Complete the following Python function. Return only code.\n```python\nfor i in range(10):\n    print(i)\n```",
    "class Stack:\n    def __init__(self):\n        self.items = []\n    def push(self, x):\n        self.items.append(x)\n",
    "The quick brown fox jumps over the lazy dog! Why? Because: it can; (and it wants to) - yes.",
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ abcdefghijklmnopqrstuvwxyz 0123456789 .,;:!?'\"()[]{}<>+-*/=%$#@&_|~^`\\",
    "You are a helpful assistant. Please answer the question step by step and give the final answer.",
)


@functools.lru_cache(maxsize=8)
def _trained_tokenizer_json(vocab_size: int, extra_corpus: tuple[str, ...]) -> str:
    """Train the byte-level BPE (cached per process: tests build many tiny models)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: nothing is ever unknown
        show_progress=False,
    )
    # Repeat the corpus so merge counts are well separated (fewer ties to break).
    tok.train_from_iterator(list(TINY_CORPUS) * 4 + list(extra_corpus), trainer=trainer)
    return tok.to_str()


def make_tiny_tokenizer(vocab_size: int = 512, extra_corpus: tuple[str, ...] = ()) -> PreTrainedTokenizerFast:
    """A deterministic ChatML byte-level BPE tokenizer of at most `vocab_size` tokens.

    `extra_corpus` changes the learned merges (tests use it to build a mismatching tokenizer).
    """
    backend = Tokenizer.from_str(_trained_tokenizer_json(vocab_size, tuple(extra_corpus)))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        chat_template=CHATML_TEMPLATE,
        model_max_length=2048,
    )
    tokenizer.padding_side = "left"
    return tokenizer


def make_tiny_model(
    out_dir: str | os.PathLike,
    *,
    vocab_size: int = 512,
    hidden: int = 32,
    layers: int = 4,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int | None = None,
    max_positions: int = 2048,
    seed: int = 0,
    tie: bool = True,
    head_size: int | None = None,
    extra_corpus: tuple[str, ...] = (),
) -> Path:
    """Write a tiny random LlamaForCausalLM + tokenizer as a standard HF directory and return its path.

    Deterministic in all arguments. `head_size` sets the lm_head / embedding rows (default: the
    tokenizer's length) so tests can build padded-vocabulary models like Qwen2's.
    GQA (`kv_heads` < `heads`) is on by default to exercise the same attention path as SmolLM2/Qwen2.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tiny_tokenizer(vocab_size, tuple(extra_corpus))
    n_vocab = head_size if head_size is not None else len(tokenizer)
    if n_vocab < len(tokenizer):
        raise ValueError(f"head_size {n_vocab} is smaller than the tokenizer ({len(tokenizer)} tokens)")
    config = LlamaConfig(
        vocab_size=n_vocab,
        hidden_size=hidden,
        intermediate_size=intermediate or 2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=tie,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        rms_norm_eps=1e-5,
    )
    # A private generator state: seeding must not disturb the caller's global RNG stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        # The default init (std 0.02) gives near-uniform logits; a larger embedding scale makes
        # tiny models' argmax decisive, so greedy-equality tests are not decided by rounding noise.
        with torch.no_grad():
            model.get_input_embeddings().weight.normal_(0.0, 1.0)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
