"""A GGUF header reader that checks a model file before llama.cpp sees it.

llama.cpp trusts the file it is given; a truncated or garbage file can crash
the process inside the native library. :func:`inspect_gguf` reads the header,
the metadata and the tensor table in pure Python, computes where the tensor
data must end, and raises :class:`ModelError` naming the file when anything is
off. It reads only the header (a few MB at most), never the tensor data.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Mapping

from p2pnet.experts.errors import ModelError

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32

_MAX_STRING = 1 << 24  # one metadata string (a chat template is a few KB)
_MAX_ARRAY = 1 << 24  # items in one metadata array (vocabularies are ~10^5)
_MAX_TENSORS = 1 << 20
_MAX_KV = 1 << 16
_MAX_DIMS = 4

# ggml tensor types: id -> (name, block size in elements, bytes per block)
GGML_TYPES: Mapping[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 36),
    10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2),
    26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66), 39: ("MXFP4", 32, 17),
}

# llama_ftype (general.file_type) -> quantization label
FILE_TYPES: Mapping[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
    17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS",
    23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S",
    29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0",
    38: "MXFP4_MOE",
}

# metadata value types: id -> struct format of a scalar (8: string, 9: array)
_SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                   10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class GGUFInfo:
    """What the header says about a model file. ``metadata`` holds scalar and
    string values only (arrays such as the vocabulary are skipped)."""

    path: Path
    version: int
    file_size: int
    tensor_count: int
    data_offset: int
    data_end: int
    metadata: Mapping[str, object] = field(repr=False)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    @property
    def name(self) -> str:
        return str(self.metadata.get("general.name", "")) or self.path.stem

    @property
    def context_length(self) -> int:
        value = self.metadata.get(f"{self.architecture}.context_length", 0)
        return int(value) if isinstance(value, int) else 0

    @property
    def quantization(self) -> str:
        file_type = self.metadata.get("general.file_type")
        if isinstance(file_type, int):
            return FILE_TYPES.get(file_type, f"ftype{file_type}")
        return "unknown"


class _Reader:
    def __init__(self, f: BinaryIO, path: Path, size: int) -> None:
        self.f, self.path, self.size = f, path, size

    def fail(self, what: str) -> ModelError:
        return ModelError(f"{self.path}: not a valid GGUF model file ({what})")

    def read(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise self.fail(f"truncated header at byte {self.f.tell()} of {self.size}")
        return data

    def unpack(self, fmt: str):
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.unpack("<Q")
        if n > _MAX_STRING or n > self.size:
            raise self.fail(f"string length {n} out of range")
        return self.read(n).decode("utf-8", errors="replace")

    def value(self, vtype: int):
        if vtype in _SCALAR_FORMATS:
            return self.unpack(_SCALAR_FORMATS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            itype, n = self.unpack("<I"), self.unpack("<Q")
            if n > _MAX_ARRAY or itype == _ARRAY:
                raise self.fail(f"array of {n} items of type {itype}")
            if itype in _SCALAR_FORMATS:  # skip fixed-size items in one seek
                skip = n * struct.calcsize(_SCALAR_FORMATS[itype])
                if self.f.tell() + skip > self.size:
                    raise self.fail("truncated metadata array")
                self.f.seek(skip, os.SEEK_CUR)
            elif itype == _STRING:
                for _ in range(n):
                    self.string()
            else:
                raise self.fail(f"unknown array item type {itype}")
            return None
        raise self.fail(f"unknown metadata value type {vtype}")


def inspect_gguf(path: str | os.PathLike) -> GGUFInfo:
    """Check that ``path`` is a complete GGUF file; ModelError naming it if not."""
    path = Path(path)
    try:
        size = path.stat().st_size
        f = path.open("rb")
    except OSError as exc:
        raise ModelError(f"{path}: cannot open model file ({exc.strerror or exc})") from None
    with f:
        r = _Reader(f, path, size)
        if size < 24 or r.read(4) != GGUF_MAGIC:
            raise r.fail("bad magic: expected 'GGUF'")
        version = r.unpack("<I")
        if version not in SUPPORTED_VERSIONS:
            raise r.fail(f"unsupported version {version}")
        n_tensors, n_kv = r.unpack("<Q"), r.unpack("<Q")
        if n_tensors > _MAX_TENSORS or n_kv > _MAX_KV:
            raise r.fail(f"implausible counts: {n_tensors} tensors, {n_kv} metadata keys")
        metadata: dict[str, object] = {}
        for _ in range(n_kv):
            key = r.string()
            value = r.value(r.unpack("<I"))
            if value is not None:
                metadata[key] = value
        alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise r.fail(f"bad alignment {alignment!r}")
        data_size_needed = 0
        for _ in range(n_tensors):
            name = r.string()
            n_dims = r.unpack("<I")
            if not 0 < n_dims <= _MAX_DIMS:
                raise r.fail(f"tensor {name!r} has {n_dims} dimensions")
            dims = [r.unpack("<Q") for _ in range(n_dims)]
            ttype, offset = r.unpack("<I"), r.unpack("<Q")
            if offset % alignment:
                raise r.fail(f"tensor {name!r} misaligned")
            n_elems = 1
            for d in dims:
                n_elems *= d
            known = GGML_TYPES.get(ttype)
            nbytes = 0 if known is None else -(-n_elems // known[1]) * known[2]
            data_size_needed = max(data_size_needed, offset + max(nbytes, 1))
        data_offset = -(-f.tell() // alignment) * alignment
        data_end = data_offset + data_size_needed
        if data_end > size:
            raise r.fail(f"truncated: tensor data needs {data_end} bytes, file has {size}")
    return GGUFInfo(path, version, size, n_tensors, data_offset, data_end, metadata)
