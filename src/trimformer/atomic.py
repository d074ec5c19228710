"""The permissions of files written through a temp file.

`tempfile.mkstemp` and `mkdtemp` create owner-only entries (0600 / 0700) so nobody else can race for
them; renamed into place they would keep those modes, and a pruned model or report written that way
would be unreadable to anyone but its writer. `plain_mode` gives the temp entry the mode an ordinary
`open()` or `mkdir()` would have had under the process umask, before it is renamed.
"""

from __future__ import annotations

import os


def _umask() -> int:
    # os.umask can only be read by setting it; set it back at once (done per call, so a process that
    # changes its umask later is honoured).
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def plain_mode(path: str | os.PathLike, directory: bool = False) -> None:
    """chmod a temp file (0666) or folder (0777) to what the umask would have made it."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())
