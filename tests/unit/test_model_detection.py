"""Model detection: what a Hugging Face directory says about its model, read from its files."""

import json
import struct

import pytest

from llmapp.services import model_detection


def write_safetensors(path, tensors: dict[str, tuple[str, list[int]]]):
    """A safetensors file with these tensors' headers (and zeroed data of the right length)."""
    sizes = {"F32": 4, "BF16": 2, "F16": 2, "I32": 4, "U8": 1}
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        length = sizes[dtype]
        for n in shape:
            length *= n
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + length]}
        offset += length
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + bytes(offset))


def test_the_tiny_gpt2_is_read_exactly(tiny_model_dir):
    import transformers

    detected = model_detection.detect(tiny_model_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert detected.parameters == sum(p.numel() for p in model.parameters())  # tied weights counted once
    assert (detected.family, detected.context_length, detected.precision) == ("gpt2", 8192, "fp32")
    assert detected.as_fields()["parameters_billions"] == float(f"{detected.parameters / 1e9:.4g}")


def test_a_sharded_quantised_model_and_a_bf16_one(tmp_path):
    # Shards add up; the config's quantisation wins over the tensors' storage dtype.
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "llama", "max_position_embeddings": 131072, "quantization_config": {"bits": 4}})
    )
    write_safetensors(tmp_path / "model-00001-of-00002.safetensors", {"a": ("I32", [1000, 512]), "n": ("F16", [4096])})
    write_safetensors(tmp_path / "model-00002-of-00002.safetensors", {"b": ("I32", [2000, 512])})
    detected = model_detection.detect(tmp_path)
    assert detected.parameters == 1000 * 512 + 4096 + 2000 * 512
    assert (detected.precision, detected.family) == ("int4", "llama")
    assert detected.context_length == 131072 and "2 safetensors header(s)" in detected.sources

    # No dtype in the config: the tensors' dominant dtype says it.
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2", "seq_length": 4096}))
    for shard in tmp_path.glob("*.safetensors"):
        shard.unlink()
    write_safetensors(tmp_path / "model.safetensors", {"w": ("BF16", [7000, 1000]), "norm": ("F32", [1000])})
    detected = model_detection.detect(tmp_path)
    assert (detected.precision, detected.parameters, detected.context_length) == ("bf16", 7_001_000, 4096)


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: p / "missing", "does not exist on this host"),
        (lambda p: (p / "file.bin").write_text("x") and p / "file.bin", "is a file: give the model's directory"),
        (lambda p: p, "has no config.json: it is not a Hugging Face model directory"),
        (lambda p: (p / "config.json").write_text("{}") and p, "has no weights"),
        (
            lambda p: (p / "config.json").write_text("{nope") and (p / "pytorch_model.bin").write_text("x") and p,
            "can't be read as JSON",
        ),
        (
            lambda p: (
                (p / "config.json").write_text("{}")
                and (p / "model.safetensors").write_bytes(struct.pack("<Q", 2**40))
                and p
            ),
            "not a safetensors file",
        ),
    ],
)
def test_what_is_not_a_model_directory_says_why(tmp_path, make, reason):
    with pytest.raises(model_detection.NotAModel, match=reason):
        model_detection.detect(make(tmp_path))


# --- GGUF files (llama.cpp) -------------------------------------------------------------------------


def write_gguf(path, *, arch="llama", file_type=15, layers=4, heads=8, kv_heads=2, width=256, context=4096):
    """A GGUF file with llama.cpp's metadata and a few small tensors (no real weights)."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_context_length(context)
    writer.add_embedding_length(width)
    writer.add_block_count(layers)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_file_type(file_type)
    writer.add_tensor("token_embd.weight", np.zeros((10, width), dtype=np.float32))
    writer.add_tensor("output_norm.weight", np.zeros((width,), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_gguf_header_gives_architecture_size_quantisation_and_context(tmp_path):
    path = write_gguf(tmp_path / "m.gguf")  # file type 15: MOSTLY_Q4_K_M
    info = model_detection.read_gguf(path)
    assert (info.architecture, info.quantization, info.context_length) == ("llama", "Q4_K_M", 4096)
    assert info.parameters == 10 * 256 + 256 and (info.layers, info.kv_heads, info.head_size) == (4, 2, 32)
    detected = model_detection.detect_gguf(path)
    assert (detected.family, detected.precision, detected.quantization) == ("llama", "int4", "Q4_K_M")
    assert model_detection.detect_gguf(write_gguf(tmp_path / "q8.gguf", file_type=7)).precision == "int8"


def test_the_tiny_gguf_holds_the_tiny_models_parameters(tmp_path, tiny_model_dir):
    from llmapp.runtime.tiny_gguf import build_tiny_gguf

    gguf_file = build_tiny_gguf(tmp_path / "tiny.gguf", tiny_model_dir)
    detected = model_detection.detect_gguf(gguf_file)
    # Tied output weights and attention masks are not written: the same count as the safetensors give.
    assert detected.parameters == model_detection.detect(tiny_model_dir).parameters
    assert (detected.family, detected.precision, detected.context_length) == ("gpt2", "fp32", 8192)


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("model.bin", b"GGUF", "is not a .gguf file"),
        ("fake.gguf", b"PK\x03\x04 a zip", "does not start with GGUF's magic bytes"),
        ("missing.gguf", None, "does not exist on this host"),
        ("truncated.gguf", b"GGUF\x03\x00", "header can't be read"),
    ],
)
def test_what_is_not_a_gguf_file_says_why(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(model_detection.NotAModel, match=message):
        model_detection.read_gguf(path)
