"""Files and folders the library creates: owner-only, and no temporary leftovers.

* :func:`private_makedirs` creates every missing level of a folder as ``0700``
  (``os.makedirs(mode=...)`` leaves the intermediate levels to the umask).
* :func:`tighten_file` makes a database file the library opens owner-only
  (``0600``) when this user owns it, and names it in a warning otherwise.
* Temporary files carry the pid of the process that made them
  (:func:`export_temp_name`, :func:`import_temp_prefix`), so the next run can
  tell the leftovers of a killed process from work in progress and remove them
  (:func:`remove_stale_exports`, :func:`remove_stale_import_dirs`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import stat

__all__ = [
    "export_temp_name",
    "import_temp_prefix",
    "pid_alive",
    "private_makedirs",
    "remove_stale_exports",
    "remove_stale_import_dirs",
    "tighten_file",
]

logger = logging.getLogger("cyllama_db")

_EXPORT_TEMP = re.compile(r"^\..+\.(\d+)\.cyllama-export\.tmp$")
_IMPORT_TEMP = re.compile(r"^cyllama-import-(\d+)-")


def private_makedirs(folder: str) -> None:
    """Create ``folder`` and any missing parent as ``0700``; existing folders are left as they are."""
    folder = os.path.abspath(folder)
    missing: list[str] = []
    current = folder
    while not os.path.isdir(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    for path in reversed(missing):
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            if not os.path.isdir(path):
                raise
            continue
        # mkdir's mode is masked by the umask; 0700 is the most it can ask, so
        # only a umask that removes owner bits needs this, but it is cheap.
        with contextlib.suppress(OSError):
            os.chmod(path, 0o700)


def tighten_file(path: str) -> None:
    """Make an existing file owner-only (``0600``) if group or others can read or write it.

    When this user does not own the file (or the change fails), a WARNING names it instead.
    """
    try:
        info = os.stat(path)
    except OSError:
        return
    if not stat.S_ISREG(info.st_mode) or not info.st_mode & 0o077:
        return
    mode = stat.S_IMODE(info.st_mode)
    if hasattr(os, "getuid") and info.st_uid == os.getuid():
        try:
            os.chmod(path, mode & 0o700)
            logger.info("tightened %s from %s to %s (owner-only)", path, oct(mode), oct(mode & 0o700))
            return
        except OSError as exc:
            reason = str(exc)
    else:
        reason = "it belongs to another user"
    logger.warning(
        "database file %s is readable by other users (mode %s) and could not be made owner-only (%s); "
        "run: chmod 600 %s",
        path, oct(mode), reason, path,
    )


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (on this machine)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, but another user's
    return True


def export_temp_name(dest: str) -> str:
    """The temporary file an export to ``dest`` writes first (beside it, with this pid)."""
    folder, base = os.path.split(dest)
    return os.path.join(folder, f".{base}.{os.getpid()}.cyllama-export.tmp")


def remove_stale_exports(folder: str) -> int:
    """Remove the temporary export files in ``folder`` whose process is gone; return how many."""
    removed = 0
    try:
        names = os.listdir(folder)
    except OSError:
        return 0
    for name in names:
        match = _EXPORT_TEMP.match(name)
        if match is None or pid_alive(int(match.group(1))):
            continue
        path = os.path.join(folder, name)
        with contextlib.suppress(OSError):
            if os.path.isfile(path) and not os.path.islink(path) and _mine(path):
                os.remove(path)
                removed += 1
    if removed:
        logger.info("removed %d temporary file(s) left in %s by killed exports", removed, folder)
    return removed


def import_temp_prefix() -> str:
    """The name prefix of an import's private working folder (with this pid)."""
    return f"cyllama-import-{os.getpid()}-"


def remove_stale_import_dirs(folder: str | None = None) -> int:
    """Remove import working folders (in the temp folder) whose process is gone; return how many."""
    if folder is None:
        import tempfile  # deferred: tempfile and shutil cost ~4 ms at import

        folder = tempfile.gettempdir()
    removed = 0
    try:
        names = os.listdir(folder)
    except OSError:
        return 0
    for name in names:
        match = _IMPORT_TEMP.match(name)
        if match is None or pid_alive(int(match.group(1))):
            continue
        path = os.path.join(folder, name)
        if os.path.isdir(path) and not os.path.islink(path) and _mine(path):
            import shutil  # only when there are leftovers to remove

            shutil.rmtree(path, ignore_errors=True)
            removed += not os.path.exists(path)
    if removed:
        logger.info("removed %d working folder(s) left in %s by killed imports", removed, folder)
    return removed


def _mine(path: str) -> bool:
    if not hasattr(os, "getuid"):
        return True
    try:
        return os.lstat(path).st_uid == os.getuid()
    except OSError:
        return False
