"""File permissions of what geofm writes: the user's umask, as for any new file.

Some writers create their files private (``safetensors`` writes ``0600``); a file renamed into
place keeps that mode, so outputs are given ``0o666 & ~umask`` before the rename, and colleagues
sharing a filesystem can read them wherever the umask lets them.
"""

from __future__ import annotations

import os
from pathlib import Path


def current_umask() -> int:
    """The process's umask (read from ``/proc`` where it can be, without changing it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: read it by setting it, then put it back at once
    os.umask(mask)
    return mask


def apply_umask(path: str | Path) -> None:
    """Give the file at ``path`` the mode a newly created file gets (``0o666 & ~umask``)."""
    os.chmod(path, 0o666 & ~current_umask())
