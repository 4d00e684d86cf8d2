"""Reading the small text files a user names (a node config, a scenario, a
genesis). The read is bounded, so a path that names a device or a huge file
fails with one clear line instead of filling the memory. And writing the
node's own small JSON files so that a reader never sees half of one."""

from __future__ import annotations

import json
import os
from pathlib import Path

SMALL_FILE_BYTES = 1 << 20


class SmallFileError(ValueError):
    """Why a file is not the small text file expected; the caller words it
    into its own error class (ConfigError, ScenarioError, GenesisError)."""


def read_small_text(path: str | Path, noun: str, limit: int = SMALL_FILE_BYTES) -> str:
    """The UTF-8 text of ``path``. OSError as raised; SmallFileError ("is
    larger than 1 MiB, not {noun}", "is not UTF-8 text, not {noun}")."""
    with open(path, "rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise SmallFileError(f"is larger than {limit >> 20} MiB, not {noun}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise SmallFileError(f"is not UTF-8 text, not {noun}") from None


def write_json_atomic(path: Path, obj) -> None:
    """Write ``obj`` as JSON to ``path`` through a temporary file beside it
    and a rename: readers see the old file or the new one, never a part."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)
