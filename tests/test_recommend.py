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


def test_unmet_needs_are_said_with_the_shortfall():
    ok = rec.recommend(LAPTOP)
    assert ok.needs_met and ok.to_json()["needs_met"] is True
    assert ok.host_unmet == ok.tier_unmet == () and ok.to_json()["host"]["unmet"] == []
    out = rec.recommend(LAPTOP, rec.Needs(min_quality=0.95))
    assert not out.needs_met and out.host is not None
    (short,) = out.host_unmet
    assert short.need == "min_quality" and short.short_by == round(0.95 - out.host.quality, 3)
    assert f"{short.short_by:.2f} below --min-quality 0.95" in str(short)
    got = out.to_json()
    assert got["needs_met"] is False and got["host"]["unmet"][0]["short_by"] == short.short_by
    assert got["host_pullable"]["unmet"][0]["need"] == "min_quality"
    (tier_short,) = got["ask"]["unmet"]  # no tier reaches 0.95 either: the best one, and by how much
    assert tier_short == {"need": "min_quality", "wanted": 0.95, "estimate": 0.8, "short_by": 0.15,
                          "source": "estimate"}


def test_unmet_latency_names_the_fastest_option():
    fast = rec.recommend(TINY, rec.Needs(max_latency_ms=1))
    assert fast.host is None and [u.need for u in fast.tier_unmet] == ["max_latency_ms"]
    free = rec.recommend(TINY, rec.Needs(max_latency_ms=1, max_price=0.0))
    (short,) = free.tier_unmet
    assert free.tier == "local" and short.estimate == min(e.latency_ms for e in free.candidates
                                                          if e.latency_ms is not None)
    assert "ms over --max-latency-ms 1" in str(short)


def test_local_tier_reason_gives_the_model_quality():
    out = rec.recommend(LAPTOP)
    assert out.tier == "local" and f"quality ~{out.host.quality:.2f}," in out.tier_reason
    assert "0.00" not in out.tier_reason
    assert "meets --min-quality 0.40" in rec.recommend(LAPTOP, rec.Needs(min_quality=0.4)).tier_reason


def test_a_domain_without_quality_figures_is_warned_about():
    assert rec.recommend(LAPTOP, rec.Needs(domain="Math")).warnings == ()
    out = rec.recommend(LAPTOP, rec.Needs(domain="klingon"))
    (warning,) = out.warnings
    assert "'klingon'" in warning and all(d in warning for d in ("general", "math", "code", "reasoning"))
    assert out.to_json()["warnings"] == [warning]


def test_get_says_where_to_find_a_model_outside_the_store():
    gets = {c["model"]: c["get"] for c in rec.recommend(LAPTOP).to_json()["candidates"]}
    assert gets["smollm2-135m"] == "p2pnet models pull smollm2-135m"
    get = gets["llama-3.2-1b-instruct"]
    assert rec.GGUF_SEARCH + "llama-3.2-1b-instruct" in get and "--expert model=PATH.gguf" in get


RUN = "import sys; from p2pnet_cli.main import main; main(sys.argv[1:])"


def test_command_says_when_needs_are_not_met():
    # no catalogue model or tier reaches 0.95, whatever this machine is
    out = subprocess.run([sys.executable, "-c", RUN, "models", "recommend", "--min-quality", "0.95",
                          "--domain", "klingon"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip().splitlines() == [
        "p2pnet: warning: the catalogue rates quality only for the domains general, code, math, reasoning; "
        "'klingon' gets the general scores"]
    assert "does not meet your needs: quality ~0.80 is 0.15 below --min-quality 0.95" in out.stdout
    assert "no option here or on the network meets every need you gave" in out.stdout
    js = subprocess.run([sys.executable, "-c", RUN, "models", "recommend", "--min-quality", "0.95", "--json"],
                        capture_output=True, text=True, timeout=120)
    assert js.returncode == 0 and js.stderr == "" and json.loads(js.stdout)["needs_met"] is False


def test_command_measures_the_real_default_model(model_cache, smollm2_path):
    # no latency need: what is measured on a busy machine must not decide what fits
    out = subprocess.run([sys.executable, "-c", RUN, "models", "recommend", "--measure", "--json",
                          "--max-latency-ms", str(10**9), "--data-dir", str(model_cache)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["speed_calibration"]["source"] == "measured here" and got["resources"]["cpu_cores"] >= 1
    assert got["host_pullable"]["model"] == "smollm2-135m" and got["host_pullable"]["est_gen_tps"] > 0
