"""What ``check`` can tell about a path the daemon will write, create or bind, touching nothing.

A plugin's ``check()`` raises ``SettingError(key, message)`` for a problem with one of its
settings: ``headrace check`` reports it at that setting's position.

A path under a regular file can never exist (``mkdir`` fails with ``EEXIST``, ``open`` with
``ENOTDIR``), and a file path that names a folder can never be opened as a file: both fail
at start-up whatever is retried, so ``check`` reports them, at the setting's position.
"""

from __future__ import annotations

from pathlib import Path


class SettingError(ValueError):
    """A problem with one setting of a plugin's config, found by its ``check()``.

    ``key`` names the setting (a key of the plugin's config) so that the error is reported
    at its position rather than at the component's.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def blocking_file(path: Path) -> Path | None:
    """The nearest existing ancestor of ``path`` when it is not a folder (so ``path`` can never exist), else None."""
    for parent in path.parents:
        try:
            if parent.exists():
                return None if parent.is_dir() else parent
        except OSError:  # a folder we may not look into: the daemon may have the right to
            return None
    return None


def check_file_path(key: str, path: Path) -> None:
    """Raise SettingError when ``path`` can never be a file: it is a folder, or lies under a file."""
    blocker = blocking_file(path)
    if blocker is not None:
        raise SettingError(key, f"{path} can never exist: {blocker} is a file, not a folder")
    if path.is_dir():
        raise SettingError(key, f"{path} is a folder, not a file")


def check_folder_path(key: str, path: Path) -> None:
    """Raise SettingError when ``path`` can never be a folder: it is a file, or lies under one."""
    blocker = path if path.exists() and not path.is_dir() else blocking_file(path)
    if blocker is not None:
        raise SettingError(key, f"{path} can never be a folder: {blocker} is a file")
