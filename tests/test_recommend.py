"""The resource-aware recommender: detection with injected probes, pure
recommendations for injected resources, and the real command on this machine."""

import json
import subprocess
import sys

from p2pnet.experts import recommend as rec

GB = rec.GB
LAPTOP = rec.Resources(ram_bytes=16 * GB, cpu_cores=8)
PI = rec.Resources(ram_bytes=2 * GB, cpu_cores=4)
TINY = rec.Resources(ram_bytes=1 * GB, cpu_cores=2)
SERVER = rec.Resources(ram_bytes=128 * GB, cpu_cores=16, gpus=(rec.Gpu("NVIDIA H100 80GB HBM3", 80 * GB),))


def test_parse_nvidia_smi():
    gpus = rec.parse_nvidia_smi("NVIDIA H100 80GB HBM3, 81559\nTesla T4, 15360\ngarbage\n")
    assert gpus == (rec.Gpu("NVIDIA H100 80GB HBM3", 81559 * 2**20), rec.Gpu("Tesla T4", 15360 * 2**20))


def test_detect_resources_with_and_without_nvidia_smi(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16384000 kB\nMemFree:         1000 kB\n")

    class Done:
        returncode, stdout = 0, "Tesla T4, 15360\n"

    calls = []

    def run(cmd, **kw):
        calls.append(cmd)
        return Done()

    found = rec.detect_resources(meminfo=meminfo, run=run, which=lambda exe: "/usr/bin/nvidia-smi")
    assert found.ram_bytes == 16384000 * 1024 and found.cpu_cores >= 1
    assert found.gpus == (rec.Gpu("Tesla T4", 15360 * 2**20),) and calls[0][0] == "/usr/bin/nvidia-smi"
    assert rec.detect_resources(meminfo=meminfo, run=run, which=lambda exe: None).gpus == ()


def test_recommendation_is_deterministic_and_fits_the_machine():
    a, b = rec.recommend(LAPTOP), rec.recommend(LAPTOP)
    assert a.to_json() == b.to_json()
    assert a.host.device == "cpu" and a.host.latency_ms <= rec.DEFAULT_MAX_LATENCY_MS
    assert a.host_pullable.model.name == "smollm2-135m" and a.host_pullable.model.size_source == rec.MEASURED
    assert a.tier == "local"
    # less memory: the host must fit in RAM_SHARE of it
    for res in (PI, TINY):
        host = rec.recommend(res).host
        assert host.memory_bytes <= rec.RAM_SHARE * res.ram_bytes
    assert rec.recommend(TINY).host.model.name == "smollm2-135m"


def test_gpu_hosts_a_large_model():
    out = rec.recommend(SERVER)
    assert out.host.device == "gpu" and out.host.model.params_b >= 32
    assert rec.recommend(SERVER, rec.Needs(max_latency_ms=1)).host is None


def test_needs_pick_the_tier():
    assert rec.recommend(TINY, rec.Needs(min_quality=0.5)).tier == "network-general"
    assert rec.recommend(TINY, rec.Needs(min_quality=0.75)).tier == "network-large"
    capped = rec.recommend(TINY, rec.Needs(min_quality=0.75, max_price=0.5))
    assert capped.tier == "network-general" and "no tier meets" in capped.tier_reason
    assert rec.recommend(TINY, rec.Needs(min_quality=0.9, max_price=0.0)).tier == "local"


def test_hard_domains_lower_small_model_quality():
    general = {(e.model.name, e.model.quantization): e.quality for e in rec.recommend(LAPTOP).candidates}
    math = {(e.model.name, e.model.quantization): e.quality
            for e in rec.recommend(LAPTOP, rec.Needs(domain="math")).candidates}
    assert math[("smollm2-135m", "Q4_1")] < general[("smollm2-135m", "Q4_1")]
    assert math[("qwen2.5-7b-instruct", "Q4_K_M")] == general[("qwen2.5-7b-instruct", "Q4_K_M")]


def test_estimates_are_labelled():
    out = rec.recommend(LAPTOP).to_json()
    assert all(c["quality_source"] == "estimate" for c in out["candidates"])
    assert {c["size"] for c in out["candidates"]} == {"measured", "estimate"}
    assert "estimates" in out["note"]


RUN = "import sys; from p2pnet_cli.main import main; main(sys.argv[1:])"


def test_command_measures_the_real_default_model(model_cache, smollm2_path):
    # no latency need: what is measured on a busy machine must not decide what fits
    out = subprocess.run([sys.executable, "-c", RUN, "models", "recommend", "--measure", "--json",
                          "--max-latency-ms", str(10**9), "--data-dir", str(model_cache)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["speed_calibration"]["source"] == "measured here" and got["resources"]["cpu_cores"] >= 1
    assert got["host_pullable"]["model"] == "smollm2-135m" and got["host_pullable"]["est_gen_tps"] > 0
