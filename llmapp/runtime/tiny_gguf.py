"""The tiny GPT-2 as a GGUF file, for llama.cpp: for tests and the demo's `hello-gguf`, never downloaded.

The weights and tokenizer are tiny_model.py's (built on this machine), written with the `gguf` package's
writer under llama.cpp's names for the GPT-2 architecture (as its convert_hf_to_gguf.py writes them):
the Conv1D weights transposed, the tied output left out (llama.cpp reuses the embeddings), the byte-level
BPE vocabulary with its merges, the special tokens as control tokens, the chat template.
"""

import json
from pathlib import Path

from .tiny_model import build_tiny_model

SKIPPED = (".attn.bias", ".attn.masked_bias")  # causal masks, not weights
TRANSPOSED = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight")
BLOCK_NAMES = {
    "ln_1": "attn_norm",
    "attn.c_attn": "attn_qkv",
    "attn.c_proj": "attn_output",
    "ln_2": "ffn_norm",
    "mlp.c_fc": "ffn_up",
    "mlp.c_proj": "ffn_down",
}
TOP_NAMES = {"wte": "token_embd", "wpe": "position_embd", "ln_f": "output_norm"}


def gguf_tensor_name(hf_name: str) -> str | None:
    """llama.cpp's name for a GPT-2 tensor of a Hugging Face checkpoint (None: not written)."""
    name = hf_name.removeprefix("transformer.")
    if name.endswith(SKIPPED) or name.startswith("lm_head."):
        return None
    stem, _, kind = name.rpartition(".")  # kind: weight or bias
    if stem.startswith("h."):
        _, block, layer = stem.split(".", 2)
        return f"blk.{block}.{BLOCK_NAMES[layer]}.{kind}"
    return f"{TOP_NAMES[stem]}.{kind}"


def build_tiny_gguf(path: str | Path, hf_dir: str | Path | None = None) -> Path:
    """Write the tiny GPT-2 (the one at ``hf_dir``, else a new one beside ``path``) as a GGUF file."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    hf_dir = Path(hf_dir) if hf_dir else build_tiny_model(path.with_suffix(".hf"))
    config = json.loads((hf_dir / "config.json").read_text())
    tokenizer = json.loads((hf_dir / "tokenizer.json").read_text())
    tokenizer_config = json.loads((hf_dir / "tokenizer_config.json").read_text())

    writer = gguf.GGUFWriter(str(path), "gpt2")
    writer.add_name("tiny-gpt2")
    writer.add_context_length(config["n_positions"])
    writer.add_embedding_length(config["n_embd"])
    writer.add_feed_forward_length(4 * config["n_embd"])
    writer.add_block_count(config["n_layer"])
    writer.add_head_count(config["n_head"])
    writer.add_layer_norm_eps(config["layer_norm_epsilon"])
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    vocab = tokenizer["model"]["vocab"]
    specials = {t["id"] for t in tokenizer["added_tokens"] if t.get("special")}
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(
        [gguf.TokenType.CONTROL if i in specials else gguf.TokenType.NORMAL for i in range(len(tokens))]
    )
    merges = tokenizer["model"]["merges"]
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    writer.add_bos_token_id(config["bos_token_id"])
    writer.add_eos_token_id(config["eos_token_id"])
    writer.add_pad_token_id(config["pad_token_id"])
    writer.add_add_bos_token(False)
    if template := tokenizer_config.get("chat_template") or _template_file(hf_dir):
        writer.add_chat_template(template)

    for hf_name, array in load_file(str(hf_dir / "model.safetensors")).items():
        name = gguf_tensor_name(hf_name)
        if name is None:
            continue
        if hf_name.endswith(TRANSPOSED):
            array = array.T
        writer.add_tensor(name, np.ascontiguousarray(array, dtype=np.float32))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    path.chmod(0o644)  # servers may run as another account
    return path


def _template_file(hf_dir: Path) -> str | None:
    file = hf_dir / "chat_template.jinja"
    return file.read_text() if file.exists() else None
