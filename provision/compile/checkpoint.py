"""A Hugging Face-format GLM-4 checkpoint (THUDM's `glm-4-9b-chat` layout, `model_type: chatglm`): its
config and its weights, checked against the shapes the config implies before anything is compiled.

    config.json                          num_layers, hidden_size, num_attention_heads, multi_query_group_num,
                                         kv_channels, ffn_hidden_size, padded_vocab_size, rope_ratio,
                                         layernorm_epsilon, seq_length
    model.safetensors                    or model-0000N-of-0000M.safetensors + model.safetensors.index.json
    tokenizer.model, tokenizer_config.json   what the box's token_config/ holds

Weights are addressed by short names (`embedding`, `layers.3.qkv.weight`, `final_norm`, ...), the names the
graph export and `sim/tinyglm.py` use; `HF_NAMES` maps them to the checkpoint's. PyTorch `.bin` checkpoints
are not read (that would need torch): convert them to safetensors first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from provision.compile.safetensors import SafetensorsFile
from provision.errors import ConfigError

CONFIG_KEYS = {
    "layers": "num_layers",
    "hidden": "hidden_size",
    "heads": "num_attention_heads",
    "kv_heads": "multi_query_group_num",
    "head_dim": "kv_channels",
    "ffn": "ffn_hidden_size",
    "padded_vocab": "padded_vocab_size",
    "rope_ratio": "rope_ratio",
    "eps": "layernorm_epsilon",
}
LAYER_NAMES = {
    "input_norm": "input_layernorm.weight",
    "qkv.weight": "self_attention.query_key_value.weight",
    "qkv.bias": "self_attention.query_key_value.bias",
    "dense.weight": "self_attention.dense.weight",
    "post_norm": "post_attention_layernorm.weight",
    "h_to_4h.weight": "mlp.dense_h_to_4h.weight",
    "4h_to_h.weight": "mlp.dense_4h_to_h.weight",
}
TOKEN_FILES = ("tokenizer.model", "tokenizer_config.json")


def hf_name(short: str) -> str:
    """The checkpoint's name of a weight (`layers.3.qkv.weight` -> `transformer.encoder.layers.3....`)."""
    if short == "embedding":
        return "transformer.embedding.word_embeddings.weight"
    if short == "final_norm":
        return "transformer.encoder.final_layernorm.weight"
    if short == "output_layer.weight":
        return "transformer.output_layer.weight"
    _, layer, rest = short.split(".", 2)
    return f"transformer.encoder.layers.{layer}.{LAYER_NAMES[rest]}"


def expected_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Every weight the export reads, by short name, with the shape `config` implies."""
    hidden, ffn, vocab = config["hidden"], config["ffn"], config["padded_vocab"]
    q = config["heads"] * config["head_dim"]
    qkv = q + 2 * config["kv_heads"] * config["head_dim"]
    shapes: dict[str, tuple[int, ...]] = {"embedding": (vocab, hidden)}
    for layer in range(config["layers"]):
        p = f"layers.{layer}."
        shapes.update(
            {
                p + "input_norm": (hidden,),
                p + "qkv.weight": (qkv, hidden),
                p + "qkv.bias": (qkv,),
                p + "dense.weight": (hidden, q),
                p + "post_norm": (hidden,),
                p + "h_to_4h.weight": (2 * ffn, hidden),
                p + "4h_to_h.weight": (hidden, ffn),
            }
        )
    shapes["final_norm"] = (hidden,)
    shapes["output_layer.weight"] = (vocab, hidden)
    return shapes


@dataclass
class Checkpoint:
    """A validated GLM-4 checkpoint directory; `weight(short)` reads one weight as float32."""

    root: Path
    config: dict
    files: dict[str, SafetensorsFile]  # hf name -> the file holding it

    def weight(self, short: str) -> np.ndarray:
        return np.asarray(self.files[hf_name(short)].read(hf_name(short)), dtype=np.float32)

    def token_files(self) -> list[Path]:
        return [self.root / name for name in TOKEN_FILES]


def load_checkpoint(root: Path) -> Checkpoint:
    """Read and check `root`: config keys, tokenizer files, every weight present with the right shape.

    Raises:
        ConfigError: naming the file and the key (config key or weight name) that is missing or wrong.
    """
    root = Path(root)
    config_path = root / "config.json"
    if not config_path.is_file():
        raise ConfigError("no config.json: not a Hugging Face model directory", file=str(root))
    config = _read_config(config_path)
    for name in TOKEN_FILES:
        if not (root / name).is_file():
            raise ConfigError(f"missing {name} (the box's token_config needs it)", file=str(root))
    files = _weight_files(root)
    for short, shape in expected_shapes(config).items():
        name = hf_name(short)
        if name not in files:
            raise ConfigError("weight is missing", file=str(_where(root, files)), key=name)
        got = files[name].shape(name)
        if got != shape:
            raise ConfigError(
                f"has shape {list(got)}, config.json implies {list(shape)}",
                file=str(files[name].path),
                key=name,
            )
    return Checkpoint(root=root, config=config, files=files)


def _read_config(path: Path) -> dict:
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot read: {error}", file=str(path)) from None
    if not isinstance(raw, dict):
        raise ConfigError("must be a JSON object", file=str(path))
    if raw.get("model_type") != "chatglm":
        raise ConfigError(
            f"model_type is {raw.get('model_type')!r}, expected 'chatglm' (THUDM's GLM-4 layout)",
            file=str(path),
            key="model_type",
        )
    config = {}
    for ours, theirs in CONFIG_KEYS.items():
        value = raw.get(theirs)
        if ours == "rope_ratio" and value is None:
            value = 1.0
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"must be a positive number, not {value!r}", file=str(path), key=theirs)
        config[ours] = float(value) if ours in ("rope_ratio", "eps") else int(value)
    if config["heads"] % config["kv_heads"]:
        raise ConfigError("must divide num_attention_heads", file=str(path), key="multi_query_group_num")
    if config["head_dim"] % 4:
        raise ConfigError("must be a multiple of 4 (GLM rotary)", file=str(path), key="kv_channels")
    return config


def _weight_files(root: Path) -> dict[str, SafetensorsFile]:
    index = root / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ConfigError(f"cannot read weight_map: {error}", file=str(index)) from None
        opened: dict[str, SafetensorsFile] = {}
        files = {}
        for name, filename in weight_map.items():
            if filename not in opened:
                if not (root / filename).is_file():
                    raise ConfigError(f"{filename} is missing", file=str(index), key=name)
                opened[filename] = SafetensorsFile(root / filename)
            if name not in opened[filename].entries:
                raise ConfigError(f"not in {filename}", file=str(index), key=name)
            files[name] = opened[filename]
        return files
    single = root / "model.safetensors"
    if not single.is_file():
        bins = sorted(p.name for p in root.glob("*.bin"))
        hint = f" (found {bins[0]}: PyTorch checkpoints are not read, convert to safetensors)" if bins else ""
        raise ConfigError("no model.safetensors or model.safetensors.index.json" + hint, file=str(root))
    opened_file = SafetensorsFile(single)
    return {name: opened_file for name in opened_file.names()}


def _where(root: Path, files: dict[str, SafetensorsFile]) -> Path:
    paths = {f.path for f in files.values()}
    return next(iter(paths)) if len(paths) == 1 else root / "model.safetensors.index.json"
