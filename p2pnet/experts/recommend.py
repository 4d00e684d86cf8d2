"""Which model to host here, and which network tier to ask, for the machine's
resources and the user's needs.

Pure given :class:`Resources` and :class:`Needs` (inject them in tests);
:func:`detect_resources` reads them from the machine (``/proc/meminfo``, the
CPU affinity mask, ``nvidia-smi`` if present). The catalogue holds the model
store's models plus a table of well-known GGUF files whose sizes, speeds and
quality are ESTIMATES (labelled so in every output). Speeds follow one rule:
generation on a CPU is memory-bandwidth bound, ``tok/s ~ bandwidth / file
size``, with the bandwidth calibrated on the default model (measured here
with ``measure=True``, else the figure in the project's notes). See
docs/evaluation.md."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

GB = 1_000_000_000
MEASURED, ESTIMATE = "measured", "estimate"

# Calibration: SmolLM2-135M Q4_1 (98.4 MB) generates ~85 tok/s on 2 cores
# (docs/../shared notes, measured); so about 4.2 GB/s of weights per core.
DEFAULT_GEN_TPS_2_CORES = 85.0
CPU_BANDWIDTH_CAP = 40 * GB  # a desktop/server memory bus, whatever the core count (estimate)
GPU_BANDWIDTH = 500 * GB  # conservative for any CUDA card (estimate)
RAM_SHARE = 0.6  # of total RAM a hosted model may take
VRAM_SHARE = 0.9
RUNTIME_OVERHEAD = 250_000_000  # KV cache at n_ctx 2048 + runtime, bytes (estimate)
ANSWER_TOKENS = 128  # latency is quoted for an answer of this length
DEFAULT_MAX_LATENCY_MS = 15_000


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_bytes: int


@dataclass(frozen=True)
class Resources:
    ram_bytes: int
    cpu_cores: int
    gpus: tuple[Gpu, ...] = ()

    @property
    def gpu_memory_bytes(self) -> int:
        return max((g.memory_bytes for g in self.gpus), default=0)

    def to_json(self) -> dict:
        return {"ram_gb": round(self.ram_bytes / GB, 1), "cpu_cores": self.cpu_cores,
                "gpus": [{"name": g.name, "memory_gb": round(g.memory_bytes / GB, 1)} for g in self.gpus]}


@dataclass(frozen=True)
class Needs:
    domain: str = "general"
    max_latency_ms: Optional[int] = None  # for an ANSWER_TOKENS-token answer
    min_quality: float = 0.0  # 0..1 on the catalogue's rough quality scale
    max_price: Optional[float] = None  # per 1k tokens, network tiers


@dataclass(frozen=True)
class Model:
    """A GGUF file in the catalogue. ``quality`` is a rough 0..1 score
    (published MMLU-class results, rounded; always an estimate)."""

    name: str
    params_b: float
    quantization: str
    size_bytes: int
    quality: float
    size_source: str = ESTIMATE
    pull: Optional[str] = None  # name for `p2pnet models pull`, if the model store knows it


# Well-known instruct GGUF files (community quantizations). Sizes are rounded
# estimates of the usual files; quality scores are rough. ESTIMATES, not measurements.
WELL_KNOWN = (
    Model("qwen2.5-0.5b-instruct", 0.5, "Q4_K_M", 400_000_000, 0.47),
    Model("qwen2.5-0.5b-instruct", 0.5, "Q8_0", 680_000_000, 0.48),
    Model("llama-3.2-1b-instruct", 1.2, "Q4_K_M", 810_000_000, 0.49),
    Model("qwen2.5-1.5b-instruct", 1.5, "Q4_K_M", 1_100_000_000, 0.60),
    Model("llama-3.2-3b-instruct", 3.2, "Q4_K_M", 2_020_000_000, 0.63),
    Model("qwen2.5-7b-instruct", 7.6, "Q4_K_M", 4_680_000_000, 0.74),
    Model("llama-3.1-8b-instruct", 8.0, "Q4_K_M", 4_920_000_000, 0.69),
    Model("llama-3.1-8b-instruct", 8.0, "Q8_0", 8_540_000_000, 0.70),
    Model("qwen2.5-14b-instruct", 14.8, "Q4_K_M", 8_990_000_000, 0.79),
    Model("qwen2.5-32b-instruct", 32.8, "Q4_K_M", 19_900_000_000, 0.83),
    Model("llama-3.3-70b-instruct", 70.6, "Q4_K_M", 42_500_000_000, 0.86),
)
# The default model's quality on the same rough scale (an estimate too).
STORE_QUALITY = {"smollm2-135m": 0.30}
STORE_PARAMS_B = {"smollm2-135m": 0.135}


@dataclass(frozen=True)
class Tier:
    name: str
    quality: float  # rough, as above (estimate)
    price_per_1k: float  # estimate
    latency_ms: int  # for ANSWER_TOKENS tokens (estimate)
    description: str


NETWORK_TIERS = (
    Tier("network-general", 0.55, 0.1, 6_000, "the network's general experts (small models, cheap)"),
    Tier("network-large", 0.80, 1.0, 12_000, "the network's larger experts (7B+ models, pricier)"),
)
HARD_DOMAINS = {"math": 0.8, "code": 0.8, "reasoning": 0.8}
"""Quality factor of models under 3B parameters in these domains (estimate)."""
RATED_DOMAINS = ("general", *sorted(HARD_DOMAINS))
"""The domains the quality scores distinguish; any other gets the general scores."""
GGUF_SEARCH = "https://huggingface.co/models?library=gguf&search="


def domain_warning(domain: str) -> Optional[str]:
    """A warning when the catalogue has no quality figures of its own for ``domain``."""
    domain = (domain or "general").lower()
    if domain in RATED_DOMAINS:
        return None
    return (f"the catalogue rates quality only for the domains {', '.join(RATED_DOMAINS)}; "
            f"{domain!r} gets the general scores")


def catalogue(store_specs: Sequence = ()) -> list[Model]:
    """The model store's models (sizes measured: the pinned files) plus WELL_KNOWN."""
    own = [Model(s.name, STORE_PARAMS_B.get(s.name, 0.0), s.quantization, s.size,
                 STORE_QUALITY.get(s.name, 0.3), MEASURED, pull=s.name) for s in store_specs]
    return own + list(WELL_KNOWN)


def default_catalogue() -> list[Model]:
    from p2pnet.experts import modelstore

    reg = modelstore.default_registry()
    return catalogue([reg.get(n) for n in reg.names()])


# ------------------------------------------------------------- estimating

@dataclass(frozen=True)
class Calibration:
    """Bytes of weights one CPU core streams per second while generating."""

    bytes_per_core_s: float
    source: str  # "measured here" | "measured (project notes, 2 cores)"

    @classmethod
    def from_speed(cls, gen_tps: float, model_bytes: int, cores: int, source: str) -> "Calibration":
        return cls(gen_tps * model_bytes / max(1, cores), source)


def notes_calibration(default_size: int = 98_362_432) -> Calibration:
    return Calibration.from_speed(DEFAULT_GEN_TPS_2_CORES, default_size, 2, "measured (project notes, 2 cores)")


@dataclass(frozen=True)
class Estimate:
    model: Model
    device: str  # cpu | gpu | none (does not fit)
    gen_tps: float
    latency_ms: Optional[int]
    quality: float  # for the domain
    memory_bytes: int

    def to_json(self) -> dict:
        m = self.model
        return {"model": m.name, "quantization": m.quantization, "params_b": m.params_b,
                "size_gb": round(m.size_bytes / GB, 2), "size": m.size_source,
                "quality": self.quality, "quality_source": ESTIMATE, "device": self.device,
                "est_gen_tps": self.gen_tps, "est_latency_ms": self.latency_ms,
                "memory_gb": round(self.memory_bytes / GB, 2),
                "get": f"p2pnet models pull {m.pull}" if m.pull else
                       f"not in the model store: download a {m.quantization} GGUF of {m.name} (search "
                       f"{GGUF_SEARCH}{m.name}) and run it with --expert model=PATH.gguf"}


def estimate(model: Model, res: Resources, cal: Calibration, domain: str) -> Estimate:
    need = int(model.size_bytes * 1.1) + RUNTIME_OVERHEAD
    if res.gpus and need <= VRAM_SHARE * res.gpu_memory_bytes:
        device, tps = "gpu", 0.5 * GPU_BANDWIDTH / model.size_bytes
    elif need <= RAM_SHARE * res.ram_bytes:
        device, tps = "cpu", min(cal.bytes_per_core_s * res.cpu_cores, CPU_BANDWIDTH_CAP) / model.size_bytes
    else:
        device, tps = "none", 0.0
    quality = model.quality * (HARD_DOMAINS.get(domain, 1.0) if model.params_b < 3 else 1.0)
    latency = int(ANSWER_TOKENS * 1000 / tps) if tps > 0 else None
    return Estimate(model, device, round(tps, 1), latency, round(quality, 3), need)


# ------------------------------------------------------------ recommending

@dataclass(frozen=True)
class Shortfall:
    """A need that a recommended option does not meet, and by how much.
    ``estimate`` is None when nothing in the catalogue fits this machine."""

    need: str  # min_quality | max_latency_ms | max_price
    wanted: float
    estimate: Optional[float]

    @property
    def short_by(self) -> Optional[float]:
        return None if self.estimate is None else round(abs(self.estimate - self.wanted), 3)

    def to_json(self) -> dict:
        return {"need": self.need, "wanted": self.wanted, "estimate": self.estimate,
                "short_by": self.short_by, "source": ESTIMATE}

    def __str__(self) -> str:
        flag = "--" + self.need.replace("_", "-")
        if self.estimate is None:
            return f"nothing in the catalogue runs on this machine within {flag} {self.wanted}"
        if self.need == "min_quality":
            return f"quality ~{self.estimate:.2f} is {self.short_by:.2f} below {flag} {self.wanted:.2f}"
        if self.need == "max_latency_ms":
            return f"~{self.estimate:.0f} ms is {self.short_by:.0f} ms over {flag} {self.wanted}"
        return f"~{self.estimate}/1k tokens is {self.short_by} over {flag} {self.wanted}"


def shortfalls(needs: Needs, quality: float, latency_ms: Optional[int], price: float,
               max_latency: Optional[int] = None) -> tuple[Shortfall, ...]:
    """The needs an option with these estimates misses (the latency need is
    ``max_latency``, else the user's, else DEFAULT_MAX_LATENCY_MS)."""
    if max_latency is None:
        max_latency = needs.max_latency_ms if needs.max_latency_ms is not None else DEFAULT_MAX_LATENCY_MS
    out = []
    if quality < needs.min_quality:
        out.append(Shortfall("min_quality", needs.min_quality, quality))
    if latency_ms is None or latency_ms > max_latency:
        out.append(Shortfall("max_latency_ms", max_latency, latency_ms))
    if needs.max_price is not None and price > needs.max_price:
        out.append(Shortfall("max_price", needs.max_price, price))
    return tuple(out)


@dataclass(frozen=True)
class Recommendation:
    resources: Resources
    needs: Needs
    calibration: Calibration
    host: Optional[Estimate]  # best model this machine can host for the needs
    host_pullable: Optional[Estimate]  # best among what `p2pnet models pull` fetches
    tier: str
    tier_reason: str
    candidates: tuple[Estimate, ...]
    host_unmet: tuple[Shortfall, ...] = ()  # the needs `host` misses
    host_pullable_unmet: tuple[Shortfall, ...] = ()
    tier_unmet: tuple[Shortfall, ...] = ()  # the needs asking `tier` misses
    warnings: tuple[str, ...] = ()

    @property
    def needs_met(self) -> bool:
        """Whether the recommended tier meets every need (by the estimates)."""
        return not self.tier_unmet

    def to_json(self) -> dict:
        def hosted(e: Optional[Estimate], unmet: tuple[Shortfall, ...]) -> Optional[dict]:
            return e.to_json() | {"unmet": [u.to_json() for u in unmet]} if e else None

        return {
            "resources": self.resources.to_json(),
            "needs": asdict(self.needs),
            "needs_met": self.needs_met,
            "warnings": list(self.warnings),
            "speed_calibration": {"gb_per_core_s": round(self.calibration.bytes_per_core_s / GB, 2),
                                  "source": self.calibration.source},
            "host": hosted(self.host, self.host_unmet),
            "host_pullable": hosted(self.host_pullable, self.host_pullable_unmet),
            "ask": {"tier": self.tier, "reason": self.tier_reason,
                    "unmet": [u.to_json() for u in self.tier_unmet]},
            "tiers": [asdict(t) | {"source": ESTIMATE} for t in NETWORK_TIERS],
            "candidates": [e.to_json() for e in self.candidates],
            "note": "sizes of well-known models, all speeds, quality scores and tiers are estimates; "
                    "'measured' marks what was measured",
        }


def recommend(res: Resources, needs: Needs = Needs(), models: Optional[Sequence[Model]] = None,
              cal: Optional[Calibration] = None) -> Recommendation:
    models = default_catalogue() if models is None else list(models)
    cal = cal or notes_calibration()
    domain = (needs.domain or "general").lower()
    max_latency = needs.max_latency_ms if needs.max_latency_ms is not None else DEFAULT_MAX_LATENCY_MS
    ests = tuple(sorted((estimate(m, res, cal, domain) for m in models),
                        key=lambda e: (-e.quality, e.model.size_bytes, e.model.name, e.model.quantization)))
    hostable = [e for e in ests if e.device != "none" and e.latency_ms is not None and e.latency_ms <= max_latency]
    host = hostable[0] if hostable else None
    host_pullable = next((e for e in hostable if e.model.pull), None)
    tier, reason = _tier(host, needs, max_latency)

    def unmet(e: Optional[Estimate]) -> tuple[Shortfall, ...]:
        return () if e is None else shortfalls(needs, e.quality, e.latency_ms, 0.0, max_latency)

    if tier != "local":
        t = next(t for t in NETWORK_TIERS if t.name == tier)
        tier_unmet = shortfalls(needs, t.quality, t.latency_ms, t.price_per_1k, max_latency)
    elif host is not None:
        tier_unmet = unmet(host)
    else:  # nothing fits here within the latency: the fastest that fits at all, if any
        fits = [e for e in ests if e.latency_ms is not None]
        fastest = min(fits, key=lambda e: e.latency_ms) if fits else None
        tier_unmet = (Shortfall("max_latency_ms", max_latency, fastest and fastest.latency_ms),)
    warning = domain_warning(domain)
    return Recommendation(res, needs, cal, host, host_pullable, tier, reason, ests, unmet(host),
                          unmet(host_pullable), tier_unmet, (warning,) if warning else ())


def _tier(host: Optional[Estimate], needs: Needs, max_latency: int) -> tuple[str, str]:
    if host is not None and host.quality >= needs.min_quality:
        meets = f" (meets --min-quality {needs.min_quality:.2f})" if needs.min_quality else ""
        return "local", (f"{host.model.name} {host.model.quantization} here: quality ~{host.quality:.2f}{meets}, "
                         f"~{host.latency_ms} ms, at no price (estimates)")
    within = [t for t in NETWORK_TIERS if needs.max_price is None or t.price_per_1k <= needs.max_price]
    for t in within:
        if t.quality >= needs.min_quality and t.latency_ms <= max_latency:
            return t.name, (f"{t.description}: quality ~{t.quality:.2f}, ~{t.latency_ms} ms, "
                            f"~{t.price_per_1k}/1k tokens (estimates)")
    if within:
        best = max(within, key=lambda t: t.quality)
        return best.name, f"no tier meets every need; {best.name} is the best within the price (estimate)"
    return "local", "no network tier fits the price; only the local model is free"


# ------------------------------------------------------------- detection

def detect_resources(*, meminfo: Path = Path("/proc/meminfo"),
                     run: Callable = subprocess.run, which: Callable = shutil.which) -> Resources:
    """Total RAM, usable CPU cores, and NVIDIA GPUs (via nvidia-smi, if installed)."""
    ram = 0
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = int(line.split()[1]) * 1024
                break
    except OSError:
        pass
    if not ram and hasattr(os, "sysconf"):
        try:
            ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError):
            ram = 0
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return Resources(ram, cores, _nvidia_gpus(run, which))


def _nvidia_gpus(run: Callable, which: Callable) -> tuple[Gpu, ...]:
    exe = which("nvidia-smi")
    if not exe:
        return ()
    try:
        out = run([exe, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                  capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ()
    if out.returncode != 0:
        return ()
    return parse_nvidia_smi(out.stdout)


def parse_nvidia_smi(text: str) -> tuple[Gpu, ...]:
    """Rows "NAME, MiB" as printed by ``--query-gpu=name,memory.total --format=csv,noheader,nounits``."""
    gpus = []
    for line in text.strip().splitlines():
        name, _, mib = line.rpartition(",")
        try:
            gpus.append(Gpu(name.strip(), int(float(mib.strip())) * 1024 * 1024))
        except ValueError:
            continue
    return tuple(gpus)


def measured_calibration(store: Path, cores: int, n_threads: int = 0) -> Calibration:
    """Calibrate on the stored default model: load it and measure its speed here."""
    from p2pnet.experts import modelstore
    from p2pnet.experts.errors import ModelError
    from p2pnet.experts.llama import LlamaBackend, LlamaSettings

    stored = modelstore.stored(modelstore.DEFAULT_MODEL, store)
    if stored is None:
        raise ModelError(f"{modelstore.DEFAULT_MODEL} is not stored in {modelstore.models_dir(store)}; "
                         f"run `p2pnet models pull {modelstore.DEFAULT_MODEL}` to measure")
    backend = LlamaBackend(stored.path, LlamaSettings(n_threads=n_threads, n_ctx=512), sha256=stored.sha256)
    try:
        backend.load()
        speed = backend.measure_speed()
    finally:
        backend.close()
    threads = n_threads or cores
    return Calibration.from_speed(speed.gen_tps, stored.size, threads, "measured here")
