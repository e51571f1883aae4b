"""Crash-safe file replacement: write a temporary file beside the target, fsync it, rename it over the
target, fsync the directory. A crash at any point leaves either the old file or the new one, whole."""

from __future__ import annotations

import os
import shutil
from typing import Callable


def temporary_path(path: str) -> str:
    """The temporary name `path` is written under (the same on every rank, in the same directory)."""
    directory, name = os.path.split(path)
    return os.path.join(directory, f".{name}.nbserve-tmp")


def _fsync_path(path: str, directory: bool = False) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: str) -> None:
    if os.path.isdir(path):
        for root, _, files in os.walk(path):
            for name in files:
                _fsync_path(os.path.join(root, name))
            _fsync_path(root, directory=True)
    else:
        _fsync_path(path)


def commit(temporary: str, path: str) -> None:
    """Makes the written `temporary` the file (or directory) at `path`, durably."""
    _fsync_tree(temporary)
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(temporary) and os.path.lexists(path):
        # A directory cannot be renamed over a non-empty one: move the old one aside first, so that at every
        # moment one complete checkpoint exists under one of the two names.
        aside = temporary_path(path) + ".old"
        if os.path.lexists(aside):
            shutil.rmtree(aside) if os.path.isdir(aside) else os.remove(aside)
        os.replace(path, aside)
        os.replace(temporary, path)
        _fsync_path(directory, directory=True)
        shutil.rmtree(aside) if os.path.isdir(aside) else os.remove(aside)
    else:
        os.replace(temporary, path)
    _fsync_path(directory, directory=True)


def discard(temporary: str) -> None:
    if os.path.isdir(temporary) and not os.path.islink(temporary):
        shutil.rmtree(temporary, ignore_errors=True)
    elif os.path.lexists(temporary):
        os.remove(temporary)


def atomic_write(path: str, write: Callable[[str], object], *, commit_here: bool = True) -> None:
    """Calls ``write(temporary_path)`` and then replaces `path` with what it wrote.

    With ``commit_here=False`` (a process that takes part in writing but does not own the file, such as a
    non-zero rank) only ``write`` is called. If ``write`` raises, `path` is untouched and the temporary
    file is removed."""
    temporary = temporary_path(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        write(temporary)
        if commit_here:
            commit(temporary, path)
    except BaseException:
        if commit_here:
            discard(temporary)
        raise
