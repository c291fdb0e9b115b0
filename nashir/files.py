"""File-system helpers shared by the layers: the mode a new file gets.

``tempfile.mkstemp`` creates files with mode 0600 whatever the umask; a file that is renamed into place
as an output (atomic writes) must get the mode an ordinary ``open(path, "w")`` would give it,
``0666 & ~umask``.
"""

from __future__ import annotations

import os
import threading

_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask, read without changing it where the OS allows (``/proc/self/status``)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _LOCK:   # set and restore: the only portable way to read it
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def new_file_mode() -> int:
    """``0o666 & ~umask``: the mode ``open(path, "w")`` gives a new file."""
    return 0o666 & ~current_umask()


def give_default_mode(path_or_fd) -> None:
    """chmod a file made by ``tempfile.mkstemp`` (0600) to :func:`new_file_mode`."""
    if isinstance(path_or_fd, int):
        os.fchmod(path_or_fd, new_file_mode())
    else:
        os.chmod(path_or_fd, new_file_mode())
