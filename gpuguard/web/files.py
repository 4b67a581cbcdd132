"""Read a configuration file that someone else controls (a mounted ConfigMap or Secret) without being held by it.

The services re-read their policy and certificate files while they serve. Whatever sits at the path must not be
able to stall or exhaust them: a FIFO makes a plain `open()` wait for a writer for ever, a device such as
`/dev/zero` never ends, and a 50 MB file is read whole. So the file is opened without blocking, judged by what the
open file descriptor is (the kubelet's `..data` symlinks are followed, and the check cannot be raced by swapping the
path afterwards), and read only if it is a regular file, and never more than `limit` bytes of it. The standard
library alone: the node agent reads its policy through this too.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class FileRefused(OSError):
    """The path is not a regular file, or is larger than the reader accepts; the message says which (not the path:
    callers say which file they were reading)."""


def read_regular_file(path: Path, *, limit: int) -> bytes:
    """The whole content of `path`, which must be a regular file of at most `limit` bytes."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise FileRefused(f"{_kind(info.st_mode)}, not a regular file")
        if info.st_size > limit:
            raise FileRefused(f"{info.st_size} bytes, more than the {limit} read at most")
        with os.fdopen(descriptor, "rb", closefd=False) as handle:
            data = handle.read(limit + 1)  # a file still growing after fstat is cut here, not read to its end
    finally:
        os.close(descriptor)
    if len(data) > limit:
        raise FileRefused(f"grew past the {limit} bytes read at most while it was read")
    return data


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"
