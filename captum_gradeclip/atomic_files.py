"""Files written atomically: a crash leaves the old file or the new one, never a partial one.

Used by everything that writes results a later run relies on (fine-tuning checkpoints, dataset outputs).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Callable

__all__ = ["atomic_write"]


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` atomically: ``write(tmp)`` fills a temporary file beside ``path``, which is flushed to disk
    and renamed to ``path``.

    A crash leaves either the old file or the new one, never a partial one. The temporary file's name starts with
    a dot (pyarrow and pandas skip it when reading a folder) and is unique per writer.

    Args:
        path: the file to write; its folder is created if needed.
        write: called with the temporary path; it writes the whole content there.

    Examples:
        >>> atomic_write(Path("out/result.json"), lambda tmp: tmp.write_text("{}"))  # doctest: +SKIP
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp"  # unique per writer
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    try:  # make the rename itself durable (not supported on every platform)
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
