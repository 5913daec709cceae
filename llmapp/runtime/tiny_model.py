"""A tiny GPT-2 built offline: for tests and the demo's `hello-tiny`, never downloaded.

It is a normal Hugging Face model directory (config, weights, tokenizer, chat template), so the
transformers engine loads it with the same code that loads a real model.
"""

from pathlib import Path

CORPUS = [
    "hello world, this is a tiny language model served by llmapp.",
    "the quick brown fox jumps over the lazy dog.",
    "an application binds a model to a serving configuration.",
    "deploy it, call its endpoint, watch its logs and metrics.",
    "user: what is llmapp? assistant: a platform for llm applications.",
    "0 1 2 3 4 5 6 7 8 9 a b c d e f g h i j k l m n o p q r s t u v w x y z",
]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_tiny_model(path: str | Path, *, n_positions: int = 8192, seed: int = 0) -> Path:
    """Write a 2-layer GPT-2 with a BPE tokenizer trained on a few lines to ``path``; return it."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    specials = ["<|endoftext|>", "<|pad|>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(
        CORPUS,
        trainers.BpeTrainer(
            vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|endoftext|>", pad_token="<|pad|>", bos_token="<|endoftext|>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(path)

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(fast),
        n_positions=n_positions,
        n_embd=64,
        n_layer=2,
        n_head=2,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
    )
    model = GPT2LMHeadModel(config)
    # Random weights favour the special tokens; keep them out of the text (the end token stays allowed).
    model.generation_config.suppress_tokens = [fast.convert_tokens_to_ids(t) for t in specials[1:]]
    model.save_pretrained(path)
    for file in path.iterdir():  # the weights are written owner-only; servers may run as another account
        file.chmod(0o644)
    return path
