"""What a local Hugging Face model directory (or GGUF file) is, read from its files without loading it.

``config.json`` gives the family (``model_type``), the context length and the precision it was saved
in; the safetensors headers (8 bytes of length, then a JSON table of tensors with dtype and shape)
give the exact parameter count, and the precision when the config does not say. Nothing is imported
from torch or transformers: detecting a 70B model reads a few kilobytes.
"""

import json
import math
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from flask_babel import gettext as _

from ..i18n import _l

CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "seq_length", "max_sequence_length")
TORCH_DTYPES = {"float32": "fp32", "float": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16"}
SAFETENSORS_DTYPES = {"F32": "fp32", "BF16": "bf16", "F16": "fp16", "I8": "int8", "U8": "int8"}
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit


class NotAModel(ValueError):
    """The path is not a model directory this platform can serve; the message says why."""


@dataclass
class Detected:
    family: str
    context_length: int | None
    precision: str | None
    parameters: int | None  # exact, from the safetensors headers
    sources: list[str] = field(default_factory=list)  # the files it was read from
    engine: str | None = None  # the engine that takes it (set by the engine table's detect)
    quantization: str | None = None  # a GGUF file's type (Q4_K_M, F16…)

    @property
    def parameters_billions(self) -> float | None:
        if not self.parameters:
            return None
        return float(f"{self.parameters / 1e9:.4g}")  # 4 significant digits: 0.0004, 7.242, 70.55

    def as_fields(self) -> dict:
        """The registry fields it fills (those it could read)."""
        values = {
            "engine": self.engine,
            "family": self.family,
            "context_length": self.context_length,
            "precision": self.precision,
            "parameters_billions": self.parameters_billions,
        }
        return {key: value for key, value in values.items() if value not in (None, "")}


NO_DIRECTORY = _l("Give the path of a local Hugging Face model directory.")


def check_directory(path: str | Path) -> Path:
    """The directory, if it holds a model's config and weights.

    :raise NotAModel: with the reason.
    """
    directory = Path(path).expanduser()
    if not str(path).strip():
        raise NotAModel(str(NO_DIRECTORY))
    if not directory.exists():
        raise NotAModel(_("%(path)s does not exist on this host.", path=directory))
    if not directory.is_dir():
        raise NotAModel(_("%(path)s is a file: give the model's directory.", path=directory))
    if not (directory / "config.json").is_file():
        raise NotAModel(_("%(path)s has no config.json: it is not a Hugging Face model directory.", path=directory))
    if not _weight_files(directory):
        raise NotAModel(_("%(path)s has no weights (*.safetensors or pytorch_model*.bin).", path=directory))
    return directory


def detect(path: str | Path) -> Detected:
    """Read what the directory says about its model.

    :raise NotAModel: it is not a model directory, or its config.json can't be read.
    """
    directory = check_directory(path)
    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise NotAModel(_("%(path)s can't be read as JSON: %(error)s.", path=directory / "config.json", error=e)) from e
    if not isinstance(config, dict):
        raise NotAModel(_("%(path)s is not a JSON object.", path=directory / "config.json"))
    text_config = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    detected = Detected(
        family=str(config.get("model_type") or ""),
        context_length=_context_length(config) or _context_length(text_config),
        precision=_config_precision(config),
        parameters=None,
        sources=["config.json"],
    )
    counts = _safetensors_counts(directory)
    if counts:
        detected.parameters = sum(counts.values())
        detected.sources.append(_("%(count)s safetensors header(s)", count=len(_safetensors_files(directory))))
        if detected.precision is None:
            dominant = counts.most_common(1)[0][0]
            detected.precision = SAFETENSORS_DTYPES.get(dominant)
    return detected


def _weight_files(directory: Path) -> list[Path]:
    return _safetensors_files(directory) or sorted(directory.glob("pytorch_model*.bin"))


def _safetensors_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.safetensors"))


def _context_length(config: dict) -> int | None:
    for key in CONTEXT_KEYS:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def kv_shape(path: str | Path) -> tuple[int, int, int] | None:
    """(layers, KV heads, head size) from a model directory's config.json (grouped-query attention's
    ``num_key_value_heads`` counted), or None when it does not say."""
    try:
        config = json.loads((Path(path) / "config.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    config = config.get("text_config") if isinstance(config.get("text_config"), dict) else config

    def whole(*keys):
        values = (config.get(key) for key in keys)
        return next((v for v in values if isinstance(v, int) and not isinstance(v, bool) and v > 0), None)

    layers = whole("num_hidden_layers", "n_layer", "num_layers")
    heads = whole("num_attention_heads", "n_head")
    width = whole("hidden_size", "n_embd", "d_model")
    kv_heads = whole("num_key_value_heads", "n_head_kv") or heads
    head_size = whole("head_dim") or (width // heads if width and heads else None)
    return (layers, kv_heads, head_size) if layers and kv_heads and head_size else None


def _config_precision(config: dict) -> str | None:
    quantization = config.get("quantization_config")
    if isinstance(quantization, dict):
        bits = quantization.get("bits") or (
            4 if quantization.get("load_in_4bit") else 8 if quantization.get("load_in_8bit") else None
        )
        if bits in (4, 8):
            return f"int{bits}"
    dtype = config.get("torch_dtype") or config.get("dtype")
    return TORCH_DTYPES.get(str(dtype).removeprefix("torch.")) if dtype else None


def _safetensors_counts(directory: Path) -> Counter:
    """Parameters per dtype over every safetensors file, from their headers alone."""
    counts: Counter = Counter()
    for file in _safetensors_files(directory):
        try:
            with file.open("rb") as f:
                (length,) = struct.unpack("<Q", f.read(8))
                if length > MAX_HEADER_BYTES:
                    raise NotAModel(
                        _(
                            "%(file)s has a header of %(length)s bytes: not a safetensors file.",
                            file=file.name,
                            length=length,
                        )
                    )
                header = json.loads(f.read(length))
        except (OSError, struct.error, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise NotAModel(_("%(file)s can't be read as safetensors: %(error)s.", file=file.name, error=e)) from e
        for name, tensor in header.items():
            if name == "__metadata__" or not isinstance(tensor, dict):
                continue
            counts[str(tensor.get("dtype"))] += math.prod(int(n) for n in tensor.get("shape") or [])
    return counts


NO_GGUF = _l("Give the path of a local GGUF model file (*.gguf).")
# GGUF's file types (llama.cpp's LLAMA_FTYPE) as the registry's precision: what a weight takes, roughly.
GGUF_PRECISION = {"F32": "fp32", "F16": "fp16", "BF16": "bf16", "Q8_0": "int8"}


def check_gguf(path: str | Path) -> Path:
    """The file, if it is a GGUF file (by its magic bytes, not its name alone).

    :raise NotAModel: with the reason.
    """
    file = Path(path).expanduser()
    if not str(path).strip():
        raise NotAModel(str(NO_GGUF))
    if file.suffix.lower() != ".gguf":
        raise NotAModel(_("%(path)s is not a .gguf file.", path=file))
    if not file.is_file():
        raise NotAModel(
            _("%(path)s does not exist on this host.", path=file)
            if not file.exists()
            else _("%(path)s is not a file.", path=file)
        )
    try:
        with file.open("rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise NotAModel(_("%(path)s can't be read: %(error)s.", path=file, error=e.strerror)) from e
    if magic != b"GGUF":
        raise NotAModel(_("%(path)s is not a GGUF file (it does not start with GGUF's magic bytes).", path=file))
    return file


@dataclass
class GGUFInfo:
    """What a GGUF file's header says: read from its metadata and tensor table, no weights loaded."""

    architecture: str
    parameters: int
    quantization: str  # the file type (Q4_K_M, F16…), else its most common tensor type
    context_length: int | None
    layers: int | None
    kv_heads: int | None
    head_size: int | None
    file_bytes: int


def read_gguf(path: str | Path) -> GGUFInfo:
    """:raise NotAModel: not a GGUF file, or one whose header can't be read."""
    import gguf

    file = check_gguf(path)
    try:
        reader = gguf.GGUFReader(str(file))
    except Exception as e:  # noqa: BLE001 - any malformed header is the same answer to the user
        raise NotAModel(_("%(path)s's GGUF header can't be read: %(error)s.", path=file, error=e)) from e

    def value(key: str):
        field_ = reader.fields.get(key)
        return field_.contents() if field_ is not None else None

    architecture = str(value("general.architecture") or "")
    file_type = value("general.file_type")
    try:
        quantization = gguf.LlamaFileType(file_type).name if file_type is not None else ""
        quantization = quantization.removeprefix("MOSTLY_").removeprefix("ALL_")
    except ValueError:
        quantization = ""
    if not quantization:
        types = Counter(t.tensor_type.name for t in reader.tensors)
        quantization = types.most_common(1)[0][0] if types else ""
    heads = value(f"{architecture}.attention.head_count")
    kv_heads = value(f"{architecture}.attention.head_count_kv") or heads
    width = value(f"{architecture}.embedding_length")
    key_length = value(f"{architecture}.attention.key_length")  # where heads are not width / count
    return GGUFInfo(
        architecture=architecture,
        parameters=sum(int(t.n_elements) for t in reader.tensors),
        quantization=quantization,
        context_length=value(f"{architecture}.context_length"),
        layers=value(f"{architecture}.block_count"),
        kv_heads=kv_heads if isinstance(kv_heads, int) else None,
        head_size=key_length
        if isinstance(key_length, int) and key_length > 0
        else width // heads
        if isinstance(width, int) and isinstance(heads, int) and heads > 0
        else None,
        file_bytes=file.stat().st_size,
    )


def detect_gguf(path: str | Path) -> Detected:
    info = read_gguf(path)
    precision = GGUF_PRECISION.get(info.quantization)
    if precision is None and info.quantization.startswith(("Q4", "IQ4", "Q3", "Q2", "IQ3", "IQ2", "Q5", "Q6")):
        precision = "int4"  # the registry's nearest: 4-6 bits a weight
    return Detected(
        family=info.architecture,
        context_length=info.context_length,
        precision=precision,
        parameters=info.parameters,
        sources=[_("GGUF header (%(type)s)", type=info.quantization)],
        quantization=info.quantization,
    )
