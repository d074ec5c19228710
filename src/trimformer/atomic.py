"""Writing a file whole or not at all: a unique temp file beside it, then a rename.

Every writer of stage records, reports, masks, teacher logits and summaries goes through `replaced`, so
a crash leaves the old file or none (never half of one), concurrent writers of one file never share a
temp file, and the file gets the mode a plain `open()` would have given it: `mkstemp` makes owner-only
files (0600), which, renamed into place, would be unreadable to anyone but their writer.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    # os.umask can only be read by setting it; set it back at once (done per call, so a process that
    # changes its umask later is honoured).
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def plain_mode(path: str | os.PathLike, directory: bool = False) -> None:
    """chmod a temp file (0666) or folder (0777) to what the umask would have made it."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


@contextmanager
def replaced(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a unique temp path beside `path` to write; on a clean exit it gets the umask's mode (after
    the write: safetensors may replace the file it is given) and is renamed over `path`; on an error
    it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        plain_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    """Write `data` (text as UTF-8) to `path` through `replaced`."""
    with replaced(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
