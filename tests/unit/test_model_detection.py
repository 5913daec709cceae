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
