"""Reading the small text files a user names (a node config, a scenario, a
genesis). The read is bounded, so a path that names a device or a huge file
fails with one clear line instead of filling the memory."""

from __future__ import annotations

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
