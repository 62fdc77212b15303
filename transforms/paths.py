"""The one place that turns a user's path into files: Beam's ``FileSystems`` for every scheme.

Examples, initial models, update streams and outputs are all named by a path that may be local,
``gs://``, or any other filesystem registered with Beam; nothing here uses ``os.path``, ``glob``
or ``open``, so whatever works for a local directory works for a bucket.
"""

import os
import posixpath
import re
from typing import List

from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.localfilesystem import LocalFileSystem

from .formats import is_data_file

_GLOB = re.compile(r"[*?\[]")


def is_glob(pattern: str) -> bool:
    """Whether ``pattern`` holds a glob character (``*``, ``?``, ``[``)."""
    return bool(_GLOB.search(pattern))


def match(pattern: str) -> List[str]:
    """Sorted paths of the files matching ``pattern`` (``**`` crosses directories); [] for none."""
    try:
        result = FileSystems.match([pattern])[0]
    except BeamIOError as err:
        # A pattern that matches nothing is not an error; one that cannot be listed is.
        causes = list(err.exception_details.values()) if err.exception_details else [err]
        if all(isinstance(c, (FileNotFoundError, BeamIOError)) for c in causes):
            return []
        raise
    return sorted(m.path for m in result.metadata_list)


def tree(directory: str, any_extension: bool = False) -> List[str]:
    """Data files (``.avro``, ``.jsonl``, ...; with ``any_extension``, files of any name) anywhere
    under ``directory``, skipping hidden and ``_``-prefixed names (``_SUCCESS``, ``.crc``); [] when
    it is not a directory (or a prefix)."""
    found = match(FileSystems.join(directory.rstrip("/"), "**"))
    return [p for p in found
            if (any_extension or is_data_file(p)) and not posixpath.basename(p).startswith((".", "_"))]


def data_files(path: str, any_extension: bool = False) -> List[str]:
    """The files a user means by ``path``: those matching a glob, every data file under a directory
    (every file, with ``any_extension``: the format was given), or the one file. Sorted, so reading
    them is reproducible."""
    if is_glob(path):
        return match(path)
    under = tree(path, any_extension)
    if under or _is_local_directory(path):
        return under
    return match(path)


def _is_local_directory(path: str) -> bool:
    # Beam's local filesystem matches a directory's own path as if it were a file; object stores
    # have no empty directories. Only this one question needs the local filesystem's own answer.
    return isinstance(FileSystems.get_filesystem(path), LocalFileSystem) and os.path.isdir(path)
