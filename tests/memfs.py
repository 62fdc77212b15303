"""An in-memory Beam filesystem for tests, at ``memtest://``: an object store with no directories
(like GCS), so that any path handling that bypasses Beam's ``FileSystems`` fails on it offline."""

import io
import threading
import time

from apache_beam.io.filesystem import BeamIOError, CompressedFile, CompressionTypes, FileMetadata, FileSystem

SCHEME = "memtest"
_FILES = {}  # path -> (bytes, mtime)
_LOCK = threading.Lock()


def put(path: str, data: bytes) -> None:
    """Store one object."""
    with _LOCK:
        _FILES[path] = (bytes(data), time.time())


def get(path: str) -> bytes:
    """The bytes of one object."""
    return _FILES[path][0]


def paths(prefix: str = f"{SCHEME}://"):
    """Every stored path under ``prefix``, sorted."""
    return sorted(p for p in _FILES if p.startswith(prefix))


def clear() -> None:
    """Forget every object."""
    with _LOCK:
        _FILES.clear()


class _Writer(io.BytesIO):
    def __init__(self, path):
        super().__init__()
        self.path = path

    def close(self):
        if not self.closed:
            put(self.path, self.getvalue())
        super().close()


class MemoryFileSystem(FileSystem):
    """``memtest://bucket/key`` objects held in this process (enough for the DirectRunner)."""

    @classmethod
    def scheme(cls):
        return SCHEME

    def join(self, basepath, *paths):
        return "/".join([basepath.rstrip("/")] + [p.strip("/") for p in paths])

    def split(self, path):
        head, _, tail = path.rstrip("/").rpartition("/")
        return head, tail

    def mkdirs(self, path):
        pass  # an object store has no directories

    def has_dirs(self):
        return False

    def _list(self, dir_or_prefix):
        for path in paths(dir_or_prefix):
            data, mtime = _FILES[path]
            yield FileMetadata(path, len(data), mtime)

    def create(self, path, mime_type="application/octet-stream", compression_type=CompressionTypes.AUTO):
        return self._wrap(_Writer(path), path, compression_type)

    def open(self, path, mime_type="application/octet-stream", compression_type=CompressionTypes.AUTO):
        if path not in _FILES:
            raise BeamIOError(f"no object {path}", {path: FileNotFoundError(path)})
        return self._wrap(io.BytesIO(get(path)), path, compression_type)

    def _wrap(self, raw, path, compression_type):
        compression_type = FileSystem._get_compression_type(path, compression_type)
        if compression_type == CompressionTypes.UNCOMPRESSED:
            return raw
        return CompressedFile(raw, compression_type=compression_type)

    def copy(self, source_file_names, destination_file_names):
        for src, dst in zip(source_file_names, destination_file_names):
            put(dst, get(src))

    def rename(self, source_file_names, destination_file_names):
        for src, dst in zip(source_file_names, destination_file_names):
            put(dst, get(src))
            with _LOCK:
                del _FILES[src]

    def exists(self, path):
        return path in _FILES

    def size(self, path):
        return len(get(path))

    def last_updated(self, path):
        return _FILES[path][1]

    def checksum(self, path):
        return str(hash(get(path)))

    def metadata(self, path):
        data, mtime = _FILES[path]
        return FileMetadata(path, len(data), mtime)

    def delete(self, paths_to_delete):
        with _LOCK:
            for path in paths_to_delete:
                for p in [p for p in _FILES if p == path or p.startswith(path.rstrip("/") + "/")]:
                    del _FILES[p]
