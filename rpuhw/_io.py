"""Atomic file writes: a temporary file in the same folder, then ``os.replace``.

A reader never sees a half-written file, and an interrupted write leaves the old
file (or none) behind. A writer killed outright (SIGKILL, power loss) cannot remove its
temporary file; :func:`remove_stale_temps` clears those when the run resumes. The
result gets the usual permissions (0666 minus the umask), not ``mkstemp``'s owner-only
0600.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, content: str | bytes | Callable[[str], None]) -> Path:
    """Write ``content`` (text, bytes, or ``writer(tmp_path)``) to ``path`` atomically."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if callable(content):
            os.close(fd)
            content(tmp)
        else:
            with os.fdopen(fd, "wb" if isinstance(content, bytes) else "w") as fh:
                fh.write(content)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def remove_stale_temps(path: str | Path) -> list[Path]:
    """Delete the temporary files :func:`atomic_write` leaves for ``path`` when its writer
    is killed mid-write (``.NAME.*.tmp`` beside it); returns what was removed. Call it
    when no other process writes ``path`` (a resumed run owns its checkpoint)."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    removed = []
    for tmp in folder.glob(f".{path.name}.*.tmp"):
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed
