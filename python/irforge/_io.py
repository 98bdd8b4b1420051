"""File and argument helpers shared by the index classes."""
from __future__ import annotations

import numbers
import os
import threading
from collections.abc import Callable
from typing import Any, Optional

import numpy as np


def existing_file(path: Any) -> str:
    """``path`` as a string, checked to be an existing file (FileNotFoundError / IsADirectoryError otherwise)."""
    p = os.fspath(path)
    if not os.path.exists(p):
        raise FileNotFoundError(f"no index at {p}")
    if os.path.isdir(p):
        raise IsADirectoryError(f"{p} is a directory, not an index file")
    return p


def atomic_save(path: Any, write: Callable[[str], None]) -> None:
    """Call ``write(tmp)`` for a temporary file in the target's directory (the writer fsyncs it), rename it over
    ``path``, then fsync the directory: a crash never leaves a partial file under ``path``."""
    p = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(p))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"directory {directory} does not exist")
    tmp = os.path.join(directory, f".{os.path.basename(p)}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        write(tmp)
        os.replace(tmp, p)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    try:  # make the rename durable
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def check_threads(threads: Optional[int]) -> int:
    """``None`` -> 0 (all cores); otherwise a positive int (:func:`check_int`)."""
    return 0 if threads is None else check_int("threads", threads, 1)


def check_int(name: str, value: Any, low: int) -> int:
    """``value`` as an int of at least ``low`` (numpy's integers too; not a bool); ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        kind = "positive" if low == 1 else "non-negative" if low == 0 else f">= {low}"
        raise ValueError(f"{name} must be a {kind} int, got {value!r}")
    return int(value)


def check_flag(name: str, value: Any) -> bool:
    """``value`` as a bool (Python's or numpy's); TypeError naming ``name`` otherwise (a string such as "no" would
    otherwise count as true)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)
