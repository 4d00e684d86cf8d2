"""Corrupt model files are refused with a ModelError naming the file, before
llama.cpp ever sees them."""

from __future__ import annotations

import struct

import pytest

from p2pnet.experts.errors import ModelError
from p2pnet.experts.gguf import inspect_gguf
from p2pnet.experts.llama import LlamaBackend, LlamaSettings


def _copy_prefix(src, dst, n: int):
    with open(src, "rb") as f:
        dst.write_bytes(f.read(n))
    return dst


def test_real_file_is_complete(smollm2_path):
    info = inspect_gguf(smollm2_path)
    assert info.version == 3 and info.architecture == "llama"
    assert info.quantization == "Q4_1" and info.context_length == 8192
    assert info.data_end == info.file_size == smollm2_path.stat().st_size


@pytest.mark.parametrize("keep", [2_000_000, 60_000_000, 98_362_431])
def test_truncated_data_is_refused(smollm2_path, tmp_path, keep):
    bad = _copy_prefix(smollm2_path, tmp_path / "cut.gguf", keep)
    with pytest.raises(ModelError, match="truncated") as err:
        inspect_gguf(bad)
    assert str(bad) in str(err.value)


def test_truncated_header_is_refused(smollm2_path, tmp_path):
    bad = _copy_prefix(smollm2_path, tmp_path / "head.gguf", 100_000)
    with pytest.raises(ModelError, match="truncated header") as err:
        inspect_gguf(bad)
    assert str(bad) in str(err.value)


@pytest.mark.parametrize("content, reason", [
    (b"", "bad magic"),
    (b"\x00" * 4096, "bad magic"),
    (b"GGUF" + struct.pack("<I", 99) + b"\x00" * 64, "unsupported version 99"),
    (b"GGUF" + struct.pack("<IQQ", 3, 1, 1) + struct.pack("<Q", 1 << 60), "string length"),
    (b"GGUF" + struct.pack("<IQQ", 3, 10**12, 0), "implausible counts"),
])
def test_garbage_is_refused(tmp_path, content, reason):
    bad = tmp_path / "garbage.gguf"
    bad.write_bytes(content)
    with pytest.raises(ModelError, match=reason) as err:
        inspect_gguf(bad)
    assert str(bad) in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(ModelError, match="cannot open") as err:
        inspect_gguf(tmp_path / "nope.gguf")
    assert "nope.gguf" in str(err.value)


def test_backend_refuses_truncated_file_before_loading(smollm2_path, tmp_path):
    bad = _copy_prefix(smollm2_path, tmp_path / "cut.gguf", 50_000_000)
    backend = LlamaBackend(bad, LlamaSettings(n_threads=1))
    with pytest.raises(ModelError, match="truncated") as err:
        backend.load()
    assert str(bad) in str(err.value)


def test_backend_refuses_wrong_sha256(smollm2_path):
    backend = LlamaBackend(smollm2_path, LlamaSettings(n_threads=1), sha256="0" * 64)
    with pytest.raises(ModelError, match="does not match") as err:
        backend.load()
    assert str(smollm2_path) in str(err.value)


def test_backend_refuses_flipped_byte_with_known_sha256(smollm2_path, tmp_path):
    data = bytearray(smollm2_path.read_bytes())
    data[-1000] ^= 0xFF  # structure intact, content corrupt: only the hash can tell
    bad = tmp_path / "flipped.gguf"
    bad.write_bytes(bytes(data))
    inspect_gguf(bad)
    backend = LlamaBackend(bad, LlamaSettings(n_threads=1),
                           sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53")
    with pytest.raises(ModelError, match="does not match"):
        backend.load()
