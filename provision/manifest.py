"""Model manifests (`models/<model>.yaml`): variants, files, sources, thresholds, recommended layout.

Loading validates the whole file up front; every problem is a ConfigError naming file, line and key.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provision.boxpaths import UnsafePath, plain_name, relative_parts
from provision.errors import ConfigError
from provision.memory.layout import Layout
from provision.settings import DEFAULT_MODEL, load_settings
from provision.yamlfile import KeyPath, Located, load_yaml, type_name

# provision/models links to the repository's models/ (so the manifests travel in the wheel as package data)
MODELS_DIR = (Path(__file__).parent / "models").resolve()
SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Pinned:
    """A known size and sha256."""

    size: int | None
    sha256: str | None


@dataclass(frozen=True)
class AssetFile:
    """One downloadable file of a model: where it comes from and what it must be."""

    id: str
    path: str  # relative name in the cache and on the box; never escapes them
    dfss: str | None  # path on the vendor's dfss SFTP servers
    urls: tuple[str, ...]  # explicit HTTP(S)/file URLs, tried before dfss
    pinned: Pinned
    unpack: str | None  # zip files: directory to unpack into on the box
    contains: dict[str, Pinned]  # members of an archive with known size/sha256


@dataclass(frozen=True)
class DfssServer:
    """A dfss-style SFTP server. Sophgo's public ones share the published login open/open."""

    host: str
    port: int
    user: str
    password: str | None = None


@dataclass(frozen=True)
class Variant:
    name: str
    min_heap_mib: int
    files: tuple[AssetFile, ...]

    @property
    def bmodel(self) -> AssetFile:
        return next(f for f in self.files if f.path.endswith(".bmodel"))


@dataclass(frozen=True)
class Manifest:
    model: str
    title: str
    chip: str
    min_libsophon: str
    min_sdk: str
    min_python: str
    seqlen: int
    kv_cache_mib: int
    recommended_layout: Layout
    kit: AssetFile | None
    dfss_servers: tuple[DfssServer, ...]
    mirrors: tuple[str, ...]  # base URLs holding files at their dfss path, tried before the dfss servers
    files: dict[str, AssetFile]
    variants: dict[str, Variant]
    source: str
    tokenizer: str = "tiktoken"  # the format of token_config/tokenizer.model: tiktoken | sentencepiece

    def files_for(self, variant_names: list[str] | tuple[str, ...]) -> list[AssetFile]:
        """The distinct files the named variants need, in manifest order."""
        wanted = {f.id for name in variant_names for f in self.variant(name).files}
        return [f for fid, f in self.files.items() if fid in wanted]

    @property
    def by_preference(self) -> tuple[Variant, ...]:
        """The variants, best first: the one needing the most TPU memory (int8 before int4)."""
        return tuple(sorted(self.variants.values(), key=lambda v: -v.min_heap_mib))

    def check_variant(self, name: str) -> str:
        """`name` if it is `auto` or one of the manifest's variants. Raises ConfigError (naming them)."""
        if name != "auto":
            self.variant(name)
        return name

    def variant(self, name: str) -> Variant:
        try:
            return self.variants[name]
        except KeyError:
            known = ", ".join(sorted(self.variants))
            raise ConfigError(f"model {self.model} has no variant {name!r} (known: {known})") from None


def model_name(model: str | None, inventory_model: str | None = None) -> str:
    """The manifest a command works with: -m, else SOPHON_FLEET_MODEL, else the inventory's `model:` (the
    simulated fleet's names its stand-ins), else the config file's `model:`, else glm4-9b."""
    if model:
        return model
    settings = load_settings()
    if settings.model and settings.origins.get("model", "").startswith("env"):
        return settings.model
    return inventory_model or settings.model or DEFAULT_MODEL


def load_manifest(name_or_path: str | Path | None, search_first: Sequence[Path] = ()) -> Manifest:
    """Load a manifest by path, or by name from $SOPHON_FLEET_MODELS, then `search_first` (the directories
    an inventory names, e.g. the simulated fleet's, which `sim up` writes), then the built-in `models/`;
    validated completely."""
    name = model_name(str(name_or_path) if name_or_path else None)
    path = Path(name)
    if not path.suffix:
        search = (*load_settings().models_path, *search_first, MODELS_DIR)
        path = next(
            (d / f"{name}.yaml" for d in search if (d / f"{name}.yaml").exists()),
            MODELS_DIR / f"{name}.yaml",
        )
    return parse_manifest(load_yaml(path))


class _Reader:
    """Typed access to a located YAML document; every failure is a located ConfigError."""

    def __init__(self, doc: Located) -> None:
        self.doc = doc

    def get(self, path: KeyPath, kind: type | tuple[type, ...], *, required: bool = True) -> Any:
        value: Any = self.doc.data
        for part in path[:-1]:
            if isinstance(value, dict):
                value = value.get(part)
            elif isinstance(value, list) and isinstance(part, int) and part < len(value):
                value = value[part]
            else:
                value = None
        if not isinstance(value, dict):
            raise self.doc.error(path[:-1], "must be a mapping")
        if path[-1] not in value or value[path[-1]] is None:
            if required:
                raise self.doc.error(path, "is required")
            return None
        item = value[path[-1]]
        if isinstance(item, bool) and kind in (int, (int,)) or not isinstance(item, kind):
            want = type_name(kind() if isinstance(kind, type) else kind[0]())
            raise self.doc.error(path, f"must be {want}, not {type_name(item)}")
        return item

    def known_keys(self, path: KeyPath, mapping: dict[str, Any], allowed: set[str]) -> None:
        for key in mapping:
            if key not in allowed:
                raise self.doc.error(
                    (*path, key), f"unknown key (expected one of: {', '.join(sorted(allowed))})"
                )


TOP_KEYS = {
    "model",
    "title",
    "chip",
    "min_libsophon",
    "min_sdk",
    "min_python",
    "seqlen",
    "kv_cache_mib",
    "recommended_layout",
    "memory_edit_kit",
    "dfss_servers",
    "mirrors",
    "files",
    "variants",
    "tokenizer",
}
TOKENIZERS = ("tiktoken", "sentencepiece")
FILE_KEYS = {"path", "dfss", "sources", "size", "sha256", "unpack", "contains"}


def parse_manifest(doc: Located) -> Manifest:
    r = _Reader(doc)
    if not isinstance(doc.data, dict):
        raise doc.error((), "a manifest must be a mapping")
    r.known_keys((), doc.data, TOP_KEYS)
    files = {fid: _file(r, ("files", fid), fid) for fid in r.get(("files",), dict)}
    kit = _file(r, ("memory_edit_kit",), "memory-edit-kit") if "memory_edit_kit" in doc.data else None
    return Manifest(
        model=r.get(("model",), str),
        title=r.get(("title",), str, required=False) or r.get(("model",), str),
        chip=r.get(("chip",), str),
        min_libsophon=str(r.get(("min_libsophon",), (str, int, float))),
        min_sdk=r.get(("min_sdk",), str),
        min_python=str(r.get(("min_python",), (str, float))),
        seqlen=r.get(("seqlen",), int),
        kv_cache_mib=r.get(("kv_cache_mib",), int, required=False) or 0,
        recommended_layout=_layout(r, ("recommended_layout",)),
        kit=kit,
        dfss_servers=tuple(
            _server(r, i) for i in range(len(r.get(("dfss_servers",), list, required=False) or []))
        ),
        mirrors=tuple(_mirror(r, i) for i in range(len(r.get(("mirrors",), list, required=False) or []))),
        files=files,
        variants={name: _variant(r, name, files) for name in r.get(("variants",), dict)},
        source=doc.file,
        tokenizer=_tokenizer(r),
    )


def _tokenizer(r: _Reader) -> str:
    kind = r.get(("tokenizer",), str, required=False) or "tiktoken"
    if kind not in TOKENIZERS:
        raise r.doc.error(("tokenizer",), f"must be one of: {', '.join(TOKENIZERS)}")
    return kind


def _layout(r: _Reader, path: KeyPath) -> Layout:
    r.known_keys(path, r.get(path, dict), {"npu", "vpu", "vpp"})
    return Layout(*(r.get((*path, key), int) for key in ("npu", "vpu", "vpp")))


def _server(r: _Reader, index: int) -> DfssServer:
    path: KeyPath = ("dfss_servers", index)
    item = r.doc.data["dfss_servers"][index]
    if not isinstance(item, dict):
        raise r.doc.error(path, "must be a mapping with host, port, user")
    r.known_keys(path, item, {"host", "port", "user", "password"})
    user = r.get((*path, "user"), str)
    # Every entry of dfss-config.json has password == user (open/open, oponIn/oponIn): the default.
    password = r.get((*path, "password"), str, required=False) or user
    return DfssServer(r.get((*path, "host"), str), r.get((*path, "port"), int), user, password)


MIRROR_SCHEMES = ("http://", "https://", "file://")


def _mirror(r: _Reader, index: int) -> str:
    path: KeyPath = ("mirrors", index)
    item = r.doc.data["mirrors"][index]
    url = item.get("url") if isinstance(item, dict) else item
    if not isinstance(url, str) or not url.startswith(MIRROR_SCHEMES):
        raise r.doc.error(path, "must be a URL (http://, https:// or file://) or a mapping with url")
    return url.rstrip("/")


def _pinned(r: _Reader, path: KeyPath) -> Pinned:
    sha = r.get((*path, "sha256"), str, required=False)
    if sha is not None and not SHA256.match(sha):
        raise r.doc.error((*path, "sha256"), "must be 64 lowercase hex digits")
    size = r.get((*path, "size"), int, required=False)
    if size is not None and size < 0:
        raise r.doc.error((*path, "size"), "must not be negative")
    return Pinned(size=size, sha256=sha)


def _file(r: _Reader, path: KeyPath, fid: str) -> AssetFile:
    r.known_keys(path, r.get(path, dict), FILE_KEYS)
    rel = r.get((*path, "path"), str, required=False) or fid
    _check_relative(r, (*path, "path"), rel)
    sources = r.get((*path, "sources"), list, required=False) or []
    urls = tuple(r.get((*path, "sources", i, "url"), str) for i in range(len(sources)))
    contains = r.get((*path, "contains"), dict, required=False) or {}
    for member in contains:
        _check_relative(r, (*path, "contains", member), member)
    dfss = r.get((*path, "dfss"), str, required=False)
    if dfss is not None:
        _check_relative(r, (*path, "dfss"), dfss)
    unpack = r.get((*path, "unpack"), str, required=False)
    if unpack is not None:
        _check_name(r, (*path, "unpack"), unpack)
    return AssetFile(
        id=fid,
        path=rel,
        dfss=dfss,
        urls=urls,
        pinned=_pinned(r, path),
        unpack=unpack,
        contains={member: _pinned(r, (*path, "contains", member)) for member in contains},
    )


def _check_relative(r: _Reader, path: KeyPath, value: str) -> None:
    """Paths land in the cache, below a box's model directory and under a mirror's base: never outside."""
    try:
        relative_parts(value)
    except UnsafePath as exc:
        raise r.doc.error(path, f"{value!r} must be a relative path inside the cache: {exc}") from None


def _check_name(r: _Reader, path: KeyPath, value: str) -> None:
    """`unpack:` is a directory beside the archive on the box: one plain name, nothing else."""
    try:
        plain_name(value)
    except UnsafePath as exc:
        raise r.doc.error(path, f"{value!r} must be a directory name beside the archive: {exc}") from None


def _variant(r: _Reader, name: str, files: dict[str, AssetFile]) -> Variant:
    path: KeyPath = ("variants", name)
    r.known_keys(path, r.get(path, dict), {"min_heap_mib", "files"})
    ids = r.get((*path, "files"), list)
    for i, fid in enumerate(ids):
        if fid not in files:
            raise r.doc.error((*path, "files", i), f"unknown file {fid!r} (defined: {', '.join(files)})")
    chosen = tuple(files[fid] for fid in ids)
    if not any(f.path.endswith(".bmodel") for f in chosen):
        raise r.doc.error((*path, "files"), "a variant needs one .bmodel file")
    return Variant(name=name, min_heap_mib=r.get((*path, "min_heap_mib"), int), files=chosen)
