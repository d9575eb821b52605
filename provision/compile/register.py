"""A compiled model becomes an asset like a downloaded one: its files go into the content-addressed cache,
a manifest `<out>/<name>.yaml` names them (sizes and sha256 pinned in it and in its pins file), so
`assets push -m <out>/<name>.yaml` and `deploy -m <out>/<name>.yaml` take it. Everything else (chip, SDK
minimums, layout, dfss servers, the SAIL wheel, the memory_edit kit) comes from the base manifest (glm4-9b).
Compiling a second variant adds it to the same manifest.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import yaml

from provision.assets.cache import Cache, sha256_file
from provision.assets.pins import Pins, load_pins
from provision.compile.pipeline import CompileResult
from provision.errors import ConfigError
from provision.manifest import AssetFile, Manifest, load_manifest

GLM4_9B_SHAPE = {"layers": 40, "hidden": 4096}
HEAP_MARGIN_MIB = 16  # the graphs' activations (context memory) besides weights and the KV cache


def kv_cache_mib(config: dict, seqlen: int) -> int:
    """fp16 K and V of every layer: layers x 2 x [1, KV_HEADS, SEQLEN, HEAD_DIM] x 2 bytes."""
    total = config["layers"] * 2 * config["kv_heads"] * seqlen * config["head_dim"] * 2
    return max(1, math.ceil(total / 2**20))


def min_heap_mib(result: CompileResult, base: Manifest) -> int:
    """The npu heap a variant needs: the vendor's published threshold for a GLM-4-9B-shaped model, else the
    bmodel (weights and code) + KV cache + a margin for activations."""
    if all(result.config[k] == v for k, v in GLM4_9B_SHAPE.items()) and result.variant in base.variants:
        return base.variant(result.variant).min_heap_mib
    size_mib = math.ceil(result.bmodel.stat().st_size / 2**20)
    return size_mib + kv_cache_mib(result.config, result.seqlen) + HEAP_MARGIN_MIB


def register_compiled(
    result: CompileResult, *, name: str, cache: Cache, base: Manifest, manifest_path: Path
) -> tuple[Manifest, Pins]:
    """Put the bmodel and token_config.zip into `cache` under model `name`, write or extend the manifest at
    `manifest_path` and pin both files in its pins file. Returns the loaded manifest and its pins.

    Raises:
        ConfigError: the manifest exists for another model or another SEQLEN.
    """
    origin = f"compiled by sophon-fleet model compile (tpu-mlir) into {result.bmodel.parent}"
    files = {
        f"bmodel-{result.variant}": (result.bmodel.name, result.bmodel),
        "token-config": ("token_config.zip", result.token_zip),
    }
    pins = {fid: _cache_copy(cache, name, path, source, origin) for fid, (path, source) in files.items()}
    doc = _existing(manifest_path, name, result.seqlen) or _from_base(base, name, result)
    doc["files"][f"bmodel-{result.variant}"] = {
        "path": result.bmodel.name,
        **pins[f"bmodel-{result.variant}"],
    }
    doc["files"]["token-config"] = {
        "path": "token_config.zip",
        "unpack": "token_config",
        **pins["token-config"],
    }
    doc["variants"][result.variant] = {
        "min_heap_mib": min_heap_mib(result, base),
        "files": [f"bmodel-{result.variant}", "token-config", "sail-wheel"],
    }
    manifest_path.parent.mkdir(parents=True, exist_ok=True)
    part = manifest_path.with_name(manifest_path.name + ".part")
    header = (
        f"# {name}: compiled by `sophon-fleet model compile` (tpu-mlir); files pinned by size and sha256.\n"
    )
    part.write_text(header + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    part.replace(manifest_path)
    manifest = load_manifest(manifest_path)
    pinned = load_pins(manifest)
    for fid, pin in pins.items():
        pinned.entries.pop(fid, None)  # a recompile replaces the file: the new one is the one pinned
        pinned.record(manifest.files[fid], pin["size"], pin["sha256"])
    pinned.save()
    return manifest, pinned


def _cache_copy(cache: Cache, model: str, path: str, source: Path, origin: str) -> dict:
    part = cache.part_path(model, path)
    part.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, part)
    sha = sha256_file(part)
    placed = cache.place(part, model, path, sha, origin)
    return {"size": placed.size, "sha256": sha}


def _existing(path: Path, name: str, seqlen: int) -> dict | None:
    if not path.is_file():
        return None
    doc = yaml.safe_load(path.read_text()) or {}
    if doc.get("model") != name:
        raise ConfigError(f"belongs to model {doc.get('model')!r}, not {name!r}", file=str(path), key="model")
    if doc.get("seqlen") != seqlen:
        raise ConfigError(
            f"was compiled with SEQLEN {doc.get('seqlen')}, not {seqlen}",
            file=str(path),
            key="seqlen",
            hint="compile every variant of one model with the same --seqlen, or use another --name",
        )
    return doc


def _asset(file: AssetFile) -> dict:
    entry: dict = {"path": file.path}
    if file.dfss:
        entry["dfss"] = file.dfss
    if file.urls:
        entry["sources"] = [{"url": url} for url in file.urls]
    return entry


def _from_base(base: Manifest, name: str, result: CompileResult) -> dict:
    doc: dict = {
        "model": name,
        "title": f"{name} (GLM-4, compiled with tpu-mlir)",
        "chip": base.chip,
        "min_libsophon": base.min_libsophon,
        "min_sdk": base.min_sdk,
        "min_python": base.min_python,
        "seqlen": result.seqlen,
        "kv_cache_mib": kv_cache_mib(result.config, result.seqlen),
        "tokenizer": "tiktoken",
        "recommended_layout": {
            "npu": base.recommended_layout.npu,
            "vpu": base.recommended_layout.vpu,
            "vpp": base.recommended_layout.vpp,
        },
    }
    if base.kit:
        doc["memory_edit_kit"] = _asset(base.kit)
    doc["dfss_servers"] = [
        {"host": s.host, "port": s.port, "user": s.user, "password": s.password} for s in base.dfss_servers
    ]
    doc["files"] = {"sail-wheel": _asset(base.files["sail-wheel"])}
    doc["variants"] = {}
    return doc
