"""Run folders on local disk or object storage, through one ``pyarrow.fs`` filesystem.

``ray.storage_path`` and ``distrec eval --run`` take a local folder or a URI. A URI is
resolved by ``pyarrow.fs.FileSystem.from_uri`` as Ray Train does (``s3://``, ``gs://``,
``hdfs://``, ``abfs://``), else by fsspec (any protocol it knows, wrapped in
``pyarrow.fs.FSSpecHandler``). :class:`Location` pairs that filesystem with a path on it; the
driver resolves it once and hands the same object to Ray Train (``storage_filesystem``) and to
the workers, so checkpoints and run outputs go through one filesystem.

**S3 settings.** pyarrow reads the endpoint (``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``, or
``?endpoint_override=host:port&scheme=http`` in the URI) and the region when the URI is resolved,
on the driver; they travel with the filesystem object. Credentials do not: each node resolves
its own (environment, ``~/.aws``, instance role).

**Publication.** Object stores have no rename, so a folder cannot appear at once. Workers write
into a local :class:`Staging` folder and upload file by file. On S3 every object is written
whole (a single PUT or a completed multipart upload; an interrupted upload leaves no object),
and :meth:`Staging.publish` uploads the completion marker (``metrics_<mode>.json``) after every
other file of rank 0's folder, so a reader that sees the marker sees all of them.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit, urlunsplit

import pyarrow.fs as pafs

from distrec import atomic
from distrec.errors import ConfigError

_CHUNK = 64 << 20  # bytes per read/write when copying (Ray Train uses the same for checkpoints)


def is_uri(spec: str | Path) -> bool:
    """True for ``scheme://...`` other than ``file://`` (a one-letter scheme is a Windows drive)."""
    scheme = urlsplit(str(spec)).scheme
    return len(scheme) > 1 and scheme != "file" and "://" in str(spec)


@dataclass(frozen=True)
class Location:
    """A file or folder on a pyarrow filesystem.

    ``path`` is the filesystem's own path (no scheme: ``bucket/prefix/run`` on S3, absolute on
    local disk); ``uri`` is how a user names it (query parameters kept, so it resolves again).
    """

    fs: pafs.FileSystem
    path: str
    uri: str

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    @property
    def name(self) -> str:
        return PurePosixPath(self.path).name

    @property
    def parent(self) -> Location:
        parts = urlsplit(self.uri)
        parent_uri = str(Path(self.uri).parent) if self.is_local else urlunsplit(
            parts._replace(path=str(PurePosixPath(parts.path).parent).rstrip("/")))
        return Location(self.fs, str(PurePosixPath(self.path).parent), parent_uri)

    def __truediv__(self, part: str) -> Location:
        rel = str(part).strip("/")
        if self.is_local:
            joined = str(Path(self.path) / rel)
            return Location(self.fs, joined, joined)
        parts = urlsplit(self.uri)
        return Location(self.fs, f"{self.path.rstrip('/')}/{rel}",
                        urlunsplit(parts._replace(path=f"{parts.path.rstrip('/')}/{rel}")))

    def __str__(self) -> str:
        return self.uri

    def _type(self) -> pafs.FileType:
        return self.fs.get_file_info(self.path).type

    def exists(self) -> bool:
        return self._type() != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self._type() == pafs.FileType.File

    def read_bytes(self) -> bytes:
        """The whole file. Raises FileNotFoundError naming the URI."""
        if not self.is_file():
            raise FileNotFoundError(f"{self.uri}: no such file")
        with self.fs.open_input_stream(self.path) as fh:
            return fh.read()

    def read_text(self) -> str:
        return self.read_bytes().decode("utf-8")

    def write_text(self, text: str) -> None:
        """Write the file whole: a temp sibling renamed into place on local disk, one upload elsewhere."""
        data = text.encode("utf-8")
        if self.is_local:
            atomic.write_file(Path(self.path), lambda tmp: tmp.write_bytes(data))
            return
        with self.fs.open_output_stream(self.path) as fh:
            fh.write(data)

    def upload(self, local: Path) -> None:
        """Copy the local file ``local`` to this location."""
        _copy(str(local), pafs.LocalFileSystem(), self.path, self.fs)

    def download(self, local: Path) -> None:
        """Copy this file, or this folder recursively, to ``local``. Raises FileNotFoundError."""
        kind = self._type()
        if kind == pafs.FileType.NotFound:
            raise FileNotFoundError(f"{self.uri}: not found")
        if kind == pafs.FileType.File:
            Path(local).parent.mkdir(parents=True, exist_ok=True)
        else:
            Path(local).mkdir(parents=True, exist_ok=True)
        _copy(self.path, self.fs, str(local), pafs.LocalFileSystem())

    def files(self) -> list[str]:
        """Paths of every file under this folder, relative to it, sorted ([] when absent)."""
        if self._type() != pafs.FileType.Directory:
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.path, recursive=True))
        root = self.path.rstrip("/") + "/"
        return sorted(i.path[len(root):] for i in infos if i.type == pafs.FileType.File)

    def ray_storage(self) -> dict:
        """``RunConfig`` keywords that make Ray Train store checkpoints here, on this filesystem."""
        if self.is_local:
            return {"storage_path": self.path}
        return {"storage_path": self.path, "storage_filesystem": self.fs}


def _copy(src: str, src_fs: pafs.FileSystem, dst: str, dst_fs: pafs.FileSystem) -> None:
    # Uploads to S3 on several threads are unsafe in pyarrow (apache/arrow#32372); Ray Train
    # turns them off for its checkpoints too.
    threads = not isinstance(dst_fs, pafs.S3FileSystem)
    pafs.copy_files(src, dst, source_filesystem=src_fs, destination_filesystem=dst_fs,
                    chunk_size=_CHUNK, use_threads=threads)


def locate(spec: str | Path) -> Location:
    """A :class:`Location` for a local path (``~`` expanded, made absolute) or a URI.

    Raises:
        ConfigError: a URI whose scheme neither pyarrow nor fsspec knows, or that they reject.
    """
    text = str(spec)
    if not is_uri(text):
        if urlsplit(text).scheme == "file":
            text = unquote(urlsplit(text).path)
        path = str(Path(text).expanduser().resolve())
        return Location(pafs.LocalFileSystem(), path, path)
    try:
        fs, path = pafs.FileSystem.from_uri(text)
    except Exception as arrow_error:  # pyarrow.lib.ArrowInvalid: not a scheme pyarrow knows
        try:
            import fsspec

            fsspec_fs, path = fsspec.core.url_to_fs(text)
        except Exception as exc:
            raise ConfigError(f"storage URI {text!r}: neither pyarrow ({arrow_error}) nor fsspec ({exc}) "
                              "can open it") from None
        fs = pafs.PyFileSystem(pafs.FSSpecHandler(fsspec_fs))
    return Location(fs, path.rstrip("/") or path, text.rstrip("/"))


@contextlib.contextmanager
def local_copy(spec: str | Path | Location) -> Iterator[Path]:
    """A local path holding ``spec``: the path itself when local, else a temporary download
    (an empty folder when nothing is there), removed on exit."""
    loc = spec if isinstance(spec, Location) else locate(spec)
    if loc.is_local:
        yield Path(loc.path)
        return
    with tempfile.TemporaryDirectory(prefix="distrec-read-") as tmp:
        target = Path(tmp) / (loc.name or "root")
        with contextlib.suppress(FileNotFoundError):
            loc.download(target)
        yield target


class Staging:
    """A local working folder for a run folder that may live on object storage.

    For a local ``target`` the folder is ``target`` itself and :meth:`push`, :meth:`pull` and
    :meth:`publish` do nothing. Otherwise files are written into a fresh temporary folder and
    uploaded: :meth:`push` uploads the files new or changed since their last upload (size and
    mtime), :meth:`publish` pushes everything with ``marker`` last. Use as a context manager
    to remove the temporary folder at the end.
    """

    def __init__(self, target: Location):
        self.target = target
        self.remote = not target.is_local
        self.local = Path(tempfile.mkdtemp(prefix="distrec-stage-")) if self.remote else Path(target.path)
        self._sent: dict[str, tuple[int, int]] = {}

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.remote:
            shutil.rmtree(self.local, ignore_errors=True)

    def _changed(self, under: str = "") -> list[str]:
        root = self.local / under
        found = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        out = []
        for file in found:
            rel = file.relative_to(self.local).as_posix()
            stat = file.stat()
            if self._sent.get(rel) != (stat.st_size, stat.st_mtime_ns):
                out.append(rel)
        return out

    def _send(self, rel: str) -> None:
        file = self.local / rel
        stat = file.stat()
        (self.target / rel).upload(file)
        self._sent[rel] = (stat.st_size, stat.st_mtime_ns)

    def push(self, under: str = "") -> None:
        """Upload the files under ``under`` (a file or folder relative to the staging folder)
        that are new or changed."""
        if self.remote:
            for rel in self._changed(under):
                self._send(rel)

    def pull(self, rel: str) -> None:
        """Download ``rel`` from the target into the staging folder, if it exists there."""
        if not self.remote:
            return
        with contextlib.suppress(FileNotFoundError):
            (self.target / rel).download(self.local / rel)
        for file in [self.local / rel] if (self.local / rel).is_file() else (self.local / rel).rglob("*"):
            if file.is_file():
                stat = file.stat()
                self._sent[file.relative_to(self.local).as_posix()] = (stat.st_size, stat.st_mtime_ns)

    def publish(self, marker: str | None = None) -> None:
        """Push every new or changed file, then ``marker`` (if this folder holds it) last."""
        if not self.remote:
            return
        for rel in self._changed():
            if rel != marker:
                self._send(rel)
        if marker is not None and (self.local / marker).is_file():
            self._send(marker)


__all__ = ["Location", "Staging", "is_uri", "local_copy", "locate"]
