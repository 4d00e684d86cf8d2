"""Builds the node's services beyond the network: hosted experts, the query
coordinator (with the OpenAI-compatible API) and the ledger.

A service may offer ``mount(router)``, ``status() -> dict``,
``announce_extra() -> dict`` and ``close()``; the node calls them."""

from __future__ import annotations

import logging
from pathlib import Path

import trio

log = logging.getLogger("p2pnet.services")


async def start_experts(node, nursery) -> list:
    """Build and start the experts the config names (the default model if none)."""
    cfg = node.config
    if cfg.no_experts:
        return []
    from p2pnet.experts import modelstore
    from p2pnet.experts.spec import build_expert, parse_expert_spec

    store = Path(cfg.model_store) if cfg.model_store else Path(cfg.data_dir)
    specs = [parse_expert_spec(s) for s in cfg.experts] or [parse_expert_spec(f"model={modelstore.DEFAULT_MODEL}")]
    if cfg.gpu_layers:
        specs = [s if s.gpu_layers else _with_gpu(s, cfg.gpu_layers) for s in specs]
    for spec in specs:
        if spec.model in modelstore.default_registry() and modelstore.stored(spec.model, store) is None:
            log.info("model %s is not stored in %s yet: pulling it now (one time)", spec.model,
                     modelstore.models_dir(store))
            await trio.to_thread.run_sync(lambda: modelstore.pull(spec.model, store))
    experts = []
    seen = set()
    for spec in specs:
        if spec.id in seen:
            from p2pnet.experts.errors import ExpertSpecError

            raise ExpertSpecError(f"two experts share the id {spec.id!r}; give one an id=...")
        seen.add(spec.id)
        # in a worker thread: a knowledge base is read and indexed here
        expert = await trio.to_thread.run_sync(lambda: build_expert(
            spec, store, n_threads=cfg.threads, knowledge_cache=Path(cfg.data_dir) / "knowledge"))
        await expert.start()
        experts.append(expert)
    return experts


def _with_gpu(spec, layers):
    import dataclasses

    return dataclasses.replace(spec, gpu_layers=layers)


class _OpenAIService:
    """The OpenAI-compatible routes over the coordinator, with the cascade
    (a hosted model answers first) for requests that ask for it."""

    def __init__(self, coordinator, experts, recent=None) -> None:
        from p2pnet.experts.cascade import CascadingService

        self.coordinator = coordinator
        self.queries = CascadingService(coordinator, experts)
        self.recent = recent  # the dashboard's list of recent queries

    def mount(self, router) -> None:
        from p2pnet.api.openai import mount_openai

        mount_openai(router, self.queries, on_done=self.recent.record if self.recent is not None else None)

    def status(self) -> dict:
        return {**self.coordinator.status(), **self.queries.status()}


async def build_services(node, nursery, preset_experts=None) -> list:
    from p2pnet.experts.coordinator import Coordinator
    from p2pnet.experts.ratings import RatingQueue
    from p2pnet.experts.responder import Responder

    experts = list(preset_experts) if preset_experts is not None else await start_experts(node, nursery)
    services: list = []
    if experts:
        services.append(Responder(node, experts, nursery))
    ratings = RatingQueue(Path(node.config.data_dir) / "ratings")
    ledger = None
    if node.config.genesis is not None:
        from p2pnet.ledger_service import start_ledger

        ledger = await start_ledger(node, nursery, ratings)
        services.append(ledger)
    from p2pnet.api.feedback import FeedbackRoutes
    from p2pnet.experts.signals import Prober, signal_settings

    from p2pnet.experts.selection import ReputationPolicy

    settings = signal_settings(node.config)
    coordinator = Coordinator(
        node, local_experts=experts, ratings=ratings,
        policy=ReputationPolicy(escalate_below=node.config.escalate_below, cost_weight=node.config.cost_weight,
                                budget=node.config.budget),
        standing=ledger.standing if ledger is not None else _neutral,
        submit_rating=ledger.submit_rating if ledger is not None else None,
        weights=settings.weights, default_judges=settings.judges,
    )
    if ledger is not None:
        ledger.coordinator = coordinator
    from p2pnet.dashboard.recent import RecentQueries
    from p2pnet.dashboard.service import DashboardService

    recent = RecentQueries()
    services.append(_OpenAIService(coordinator, experts, recent))
    services.append(FeedbackRoutes(coordinator))
    dashboard = DashboardService(node, coordinator, ledger, recent)
    await nursery.start(dashboard.run)
    services.append(dashboard)
    if settings.probe_interval_s > 0:
        prober = Prober(coordinator, interval_s=settings.probe_interval_s)
        await nursery.start(prober.run)
        services.append(prober)
    services.append(_Closer(experts, ratings))
    return services


def _neutral(peer: bytes, domain: str) -> tuple[float, float, float]:
    return (0.5, 0.0, 0.0)


class _Closer:
    def __init__(self, experts, ratings) -> None:
        self.experts, self.ratings = experts, ratings

    def close(self) -> None:
        for expert in self.experts:
            try:
                expert.backend.close()
            except Exception:
                log.exception("closing expert %s", expert.expert_id)
        self.ratings.close()
