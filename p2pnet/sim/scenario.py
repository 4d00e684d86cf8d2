"""Simulation scenarios: a TOML file checked into frozen dataclasses.

Every unknown key and invalid value raises :class:`ScenarioError` naming the
key (``expert[2].accuracy.math: must lie in [0, 1]``). The format is described
in docs/simulation.md."""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from p2pnet.errors import P2PNetError
from p2pnet.files import SmallFileError, read_small_text

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

HONEST, LAZY, RANDOM, ADVERSARIAL, COLLUDING, SYBIL = (
    "honest", "lazy", "random", "adversarial", "colluding-raters", "sybil")
JOINS_LATE, DEGRADES_AT = "joins-late", "degrades-at"
BEHAVIOURS = (HONEST, LAZY, RANDOM, ADVERSARIAL, COLLUDING, SYBIL, JOINS_LATE, DEGRADES_AT)
DISHONEST_RATERS = (ADVERSARIAL, COLLUDING, SYBIL)
"""Behaviours whose ratings are rewritten: their ring 1.0, everyone else 0.0."""
MAX_PEERS = 100_000
MAX_SEED = 2**63 - 1


class ScenarioError(P2PNetError):
    """A scenario file is unreadable or invalid; the message names the key."""


@dataclass(frozen=True)
class NetworkSpec:
    peers: int = 30
    latency_ms: float = 50.0
    jitter: float = 0.2
    loss: float = 0.0


@dataclass(frozen=True)
class LedgerSpec:
    validators: int = 4
    block_every: int = 10
    consensus: str = "bft"  # "bft": the real BFT core orders blocks; "sequencer": one sequencer
    params: Mapping[str, int] = field(default_factory=dict)
    standings: str = "chain"
    """What coordinators route by: "chain", the committed reputation (as a
    real node); "truth", every expert's true accuracy (a diagnostic: the
    policy as if learning were perfect)."""


@dataclass(frozen=True)
class ExpertGroup:
    name: str
    count: int
    domains: tuple[str, ...]
    accuracy: Mapping[str, float]
    latency_ms: float = 500.0
    price: float = 1.0
    behaviour: str = HONEST
    adversary: bool = False
    max_concurrency: int = 16
    joins_at: int = 0
    degrades_at: Optional[int] = None
    degraded_accuracy: float = 0.2
    rotate_every: Optional[int] = None
    fake_ratings: int = 2
    confidence_auc: Optional[float] = None  # answers carry a confidence this good (None: none)
    copies: bool = False  # one model on every host: the same answer to a question, the same sha256
    prices: Mapping[str, float] = field(default_factory=dict)
    """Per-domain prices (``price = { math = 4.0, trivia = 1.0 }``); a domain
    not in it costs ``price``."""

    def price_for(self, domain: str) -> float:
        return self.prices.get(domain, self.price)


@dataclass(frozen=True)
class WorkloadSpec:
    queries: int = 300
    rate: float = 2.0
    domains: Mapping[str, float] = field(default_factory=dict)
    probe_rate: float = 0.1
    probe_respondents: Optional[int] = None
    feedback_rate: float = 0.0
    deadline_s: float = 10.0
    windows: int = 20
    warmup: int = 0


@dataclass(frozen=True)
class PolicySpec:
    name: str = "reputation"
    respondents: Optional[int] = None
    params: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Scenario:
    name: str
    seed: int
    network: NetworkSpec
    ledger: LedgerSpec
    experts: tuple[ExpertGroup, ...]
    workload: WorkloadSpec
    policy: PolicySpec

    @property
    def expert_peers(self) -> int:
        return sum(g.count for g in self.experts)

    def with_seed(self, seed: Optional[int]) -> "Scenario":
        return self if seed is None else dataclasses.replace(self, seed=seed)

    def with_policy(self, name: str, **params) -> "Scenario":
        """The same scenario with another policy; a random baseline asks one expert."""
        respondents = self.policy.respondents or (1 if name == "random" else None)
        return dataclasses.replace(self, policy=PolicySpec(name, respondents, params))


# ------------------------------------------------------------------ checking


class _Table:
    """One TOML table being read: hands out values by key, then complains
    about any key nobody asked for."""

    def __init__(self, obj: Any, where: str) -> None:
        if not isinstance(obj, dict):
            raise ScenarioError(f"{where or 'scenario'}: expected a table")
        self.obj, self.where, self.seen = obj, where, set()

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def get(self, name: str, default: Any = None) -> Any:
        self.seen.add(name)
        return self.obj.get(name, default)

    def has(self, name: str) -> bool:
        return name in self.obj

    def number(self, name: str, default: Any, lo: float = -math.inf, hi: float = math.inf,
               integer: bool = False) -> Any:
        value = self.get(name, default)
        if value is None:
            return None
        ok = type(value) is int if integer else (isinstance(value, (int, float)) and not isinstance(value, bool))
        if not ok:
            raise ScenarioError(f"{self.key(name)}: expected {'an integer' if integer else 'a number'}, "
                                f"got {value!r}")
        if not (lo <= value <= hi) or (not integer and not math.isfinite(value)):
            raise ScenarioError(f"{self.key(name)}: must lie in [{lo:g}, {hi:g}], got {value!r}")
        return value

    def string(self, name: str, default: Any, choices=None) -> Any:
        value = self.get(name, default)
        if not isinstance(value, str):
            raise ScenarioError(f"{self.key(name)}: expected a string, got {value!r}")
        if choices is not None and value not in choices:
            raise ScenarioError(f"{self.key(name)}: must be one of {', '.join(choices)}; got {value!r}")
        return value

    def table(self, name: str) -> "_Table":
        return _Table(self.get(name, {}), self.key(name))

    def done(self) -> None:
        extra = sorted(set(self.obj) - self.seen)
        if extra:
            raise ScenarioError(f"{self.key(extra[0])}: unknown key")


def _domain_map(table: _Table, name: str, domains: tuple[str, ...], lo: float, hi: float) -> dict:
    """A number for every domain: a single number, or a table by domain."""
    value = table.get(name)
    if value is None:
        raise ScenarioError(f"{table.key(name)}: missing")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = {d: value for d in domains}
    sub = _Table(value, table.key(name))
    out = {d: float(sub.number(d, None, lo, hi)) for d in sub.obj}
    sub.done()
    missing = [d for d in domains if d not in out]
    if missing:
        raise ScenarioError(f"{table.key(name)}.{missing[0]}: missing")
    extra = [d for d in out if d not in domains]
    if extra:
        raise ScenarioError(f"{table.key(name)}.{extra[0]}: not one of this group's domains")
    return out


def _expert(obj: Any, i: int, queries: int) -> ExpertGroup:
    t = _Table(obj, f"expert[{i}]")
    name = t.string("name", f"group{i}")
    count = t.number("count", 1, 1, MAX_PEERS, integer=True)
    domains = t.get("domains")
    if (not isinstance(domains, list) or not domains
            or not all(isinstance(d, str) and 0 < len(d) <= 64 and d == d.lower() for d in domains)):
        raise ScenarioError(f"{t.key('domains')}: expected a non-empty list of lower-case names")
    if len(set(domains)) != len(domains):
        raise ScenarioError(f"{t.key('domains')}: duplicate domain")
    domains = tuple(domains)
    behaviour = t.string("behaviour", HONEST, BEHAVIOURS)
    accuracy = _domain_map(t, "accuracy", domains, 0.0, 1.0) if t.has("accuracy") or behaviour not in (ADVERSARIAL, SYBIL) \
        else {d: 0.0 for d in domains}
    prices: dict = {}
    if isinstance(t.obj.get("price"), dict):  # a price per domain
        prices = _domain_map(t, "price", domains, 0.0, 1e6)
    group = ExpertGroup(
        name=name, count=count, domains=domains, accuracy=accuracy,
        latency_ms=t.number("latency_ms", 500.0, 0.0, 600_000.0),
        price=max(prices.values()) if prices else t.number("price", 1.0, 0.0, 1e6),
        prices=prices,
        behaviour=behaviour,
        adversary=t.get("adversary", behaviour in DISHONEST_RATERS),
        max_concurrency=t.number("max_concurrency", 16, 1, 1024, integer=True),
        joins_at=t.number("joins_at", 0, 0, queries, integer=True),
        degrades_at=t.number("degrades_at", None, 0, queries, integer=True),
        degraded_accuracy=t.number("degraded_accuracy", 0.2, 0.0, 1.0),
        rotate_every=t.number("rotate_every", None, 1, queries, integer=True),
        fake_ratings=t.number("fake_ratings", 2, 0, 16, integer=True),
        confidence_auc=t.number("confidence_auc", None, 0.5, 0.999),
        copies=t.get("copies", False),
    )
    t.done()
    for key in ("adversary", "copies"):
        if not isinstance(getattr(group, key), bool):
            raise ScenarioError(f"{t.key(key)}: expected true or false")
    if behaviour == JOINS_LATE and not group.joins_at:
        raise ScenarioError(f"{t.key('joins_at')}: behaviour joins-late needs joins_at > 0")
    if behaviour == DEGRADES_AT and group.degrades_at is None:
        raise ScenarioError(f"{t.key('degrades_at')}: behaviour degrades-at needs degrades_at")
    if group.rotate_every is not None and behaviour != SYBIL:
        raise ScenarioError(f"{t.key('rotate_every')}: only for behaviour sybil")
    return group


def scenario_from_obj(obj: Any, default_name: str = "scenario") -> Scenario:
    top = _Table(obj, "")
    name = top.string("name", default_name)
    seed = top.number("seed", 1, 0, MAX_SEED, integer=True)

    t = top.table("workload")
    wl_queries = t.number("queries", 300, 1, 10_000_000, integer=True)
    mix = t.get("domains")
    workload_table = t
    t_net = top.table("network")
    network = NetworkSpec(
        peers=t_net.number("peers", 30, 2, MAX_PEERS, integer=True),
        latency_ms=t_net.number("latency_ms", 50.0, 0.0, 60_000.0),
        jitter=t_net.number("jitter", 0.2, 0.0, 1.0),
        loss=t_net.number("loss", 0.0, 0.0, 0.5),
    )
    t_net.done()

    raw_experts = top.get("expert")
    if not isinstance(raw_experts, list) or not raw_experts:
        raise ScenarioError("expert: at least one [[expert]] group is needed")
    experts = tuple(_expert(e, i, wl_queries) for i, e in enumerate(raw_experts))
    if len({g.name for g in experts}) != len(experts):
        raise ScenarioError("expert: group names must be unique")
    all_domains = tuple(sorted({d for g in experts for d in g.domains}))

    if mix is None:
        mix = {d: 1.0 for d in all_domains}
    mt = _Table(mix, workload_table.key("domains"))
    domains = {d: float(mt.number(d, None, 0.0, 1e9)) for d in mt.obj}
    mt.done()
    for d in domains:
        if d not in all_domains:
            raise ScenarioError(f"{mt.key(d)}: no expert group serves this domain")
    if not domains or sum(domains.values()) <= 0:
        raise ScenarioError(f"{mt.where}: needs a positive weight")
    workload = WorkloadSpec(
        queries=wl_queries,
        rate=workload_table.number("rate", 2.0, 1e-6, 1e6),
        domains=domains,
        probe_rate=workload_table.number("probe_rate", 0.1, 0.0, 1.0),
        probe_respondents=workload_table.number("probe_respondents", None, 1, 16, integer=True),
        feedback_rate=workload_table.number("feedback_rate", 0.0, 0.0, 1.0),
        deadline_s=workload_table.number("deadline_s", 10.0, 0.1, 3600.0),
        windows=workload_table.number("windows", 20, 1, 1000, integer=True),
        warmup=workload_table.number("warmup", 0, 0, wl_queries - 1, integer=True),
    )
    workload_table.done()

    t = top.table("ledger")
    ledger = LedgerSpec(
        validators=t.number("validators", 4, 1, 200, integer=True),
        block_every=t.number("block_every", 10, 1, 1_000_000, integer=True),
        consensus=t.string("consensus", "bft", ("bft", "sequencer")),
        params=_ledger_params(t.table("params")),
        standings=t.string("standings", "chain", ("chain", "truth")),
    )
    t.done()

    t = top.table("policy")
    from p2pnet.experts.selection import POLICIES

    pname = t.string("name", "reputation", tuple(sorted(POLICIES)))
    respondents = t.number("respondents", None, 1, 16, integer=True)
    params = {k: t.number(k, None) for k in list(t.obj) if k not in ("name", "respondents")}
    policy = PolicySpec(pname, respondents, params)
    _check_policy(policy)
    t.done()
    top.done()

    sc = Scenario(name, seed, network, ledger, experts, workload, policy)
    users = network.peers - sc.expert_peers
    if users < ledger.validators:
        raise ScenarioError(f"network.peers: {network.peers} peers leave {users} non-expert peers, "
                            f"fewer than ledger.validators ({ledger.validators})")
    return sc


def _ledger_params(t: _Table) -> dict:
    from p2pnet.consensus.genesis import Params

    names = {f.name for f in dataclasses.fields(Params)}
    out = {}
    for key in list(t.obj):
        if key not in names:
            raise ScenarioError(f"{t.key(key)}: unknown key")
        out[key] = t.number(key, None, 0, 2**62, integer=True)
    t.done()
    try:
        Params(**out).validate()
    except P2PNetError as exc:
        raise ScenarioError(f"ledger.{exc}") from None
    return out


def make_policy(spec: PolicySpec):
    """The SelectionPolicy a PolicySpec names; ScenarioError for bad params."""
    from p2pnet.experts.selection import POLICIES

    cls = POLICIES[spec.name]
    try:
        return cls(**spec.params)
    except TypeError:
        import inspect

        known = set(inspect.signature(cls.__init__).parameters) - {"self"}
        bad = sorted(set(spec.params) - known)
        raise ScenarioError(f"policy.{bad[0] if bad else spec.name}: unknown parameter of policy "
                            f"{spec.name!r} (known: {', '.join(sorted(known)) or 'none'})") from None
    except ValueError as exc:
        raise ScenarioError(f"policy: {exc}") from None


def _check_policy(spec: PolicySpec) -> None:
    make_policy(spec)


def load_scenario(path: str | Path) -> Scenario:
    """Read and check a scenario file."""
    path = Path(path)
    try:
        text = read_small_text(path, "a scenario file")
    except OSError as exc:
        raise ScenarioError(f"scenario {path}: {exc.strerror or exc}") from None
    except SmallFileError as exc:
        raise ScenarioError(f"scenario {path} {exc}") from None
    return parse_scenario(text, path.stem)


def parse_scenario(text: str, default_name: str = "scenario") -> Scenario:
    try:
        obj = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"scenario: not valid TOML ({exc})") from None
    return scenario_from_obj(obj, default_name)
