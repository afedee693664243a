"""The one path layer: every file the product reads or writes goes through here.

Paths are strings: local paths (``runs/x``, ``/data/h36m``, ``~/...``) or
object-store URIs (``gs://bucket/run``, also ``s3://``).  Everything is
carried by ``etils.epath``, the layer Orbax and TFDS use too, with its fsspec
backend for URIs (gcsfs for ``gs://``): ``rtpca_jax/__init__.py`` sets
``EPATH_USE_TF=false`` before anything touches a URI, because TensorFlow's own
GCS client has its endpoints compiled in and could not be tested against a
local GCS emulator, while gcsfs (``STORAGE_EMULATOR_HOST``) and tensorstore
(``TENSORSTORE_GCS_HTTP_URL``, Orbax's array storage) can.

Atomic writes
    Local files are written to ``<name>.tmp-<pid>`` and renamed over the
    target (``os.replace``), so a reader sees the old file or the new one.
    Object stores have no rename, but a single object upload is atomic by
    itself (the object appears, whole, when the upload completes; a killed
    upload leaves the old object), so :func:`write_bytes` uploads straight to
    the target.  Folders cannot be replaced atomically on an object store:
    :func:`replace_tree` copies then deletes there (Orbax checkpoints avoid
    this: on object stores Orbax marks a finished checkpoint with a commit
    file instead of renaming its temporary folder).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
import threading
from typing import Any, Iterator

from etils import epath

URI_SCHEMES = ("gs://", "s3://", "az://", "hf://")


def is_remote(p) -> bool:
    return os.fspath(p).startswith(URI_SCHEMES)


def normalize(p) -> str:
    """A path string: URIs as given (never ``os.path.abspath``-ed, which would
    turn ``gs://b/x`` into a local ``gs:/b/x``), local paths absolute."""
    s = os.fspath(p)
    if is_remote(s):
        return s.rstrip("/")
    return os.path.abspath(os.path.expanduser(s))


def path(p) -> epath.Path:
    return epath.Path(normalize(p))


def join(base, *parts: str) -> str:
    base = os.fspath(base)
    if is_remote(base):
        return "/".join([base.rstrip("/")] + [s.strip("/") for s in parts])
    return os.path.join(base, *parts)


def basename(p) -> str:
    return os.fspath(p).rstrip("/").rsplit("/", 1)[-1]


def dirname(p) -> str:
    s = normalize(p)
    if is_remote(s):
        return s.rsplit("/", 1)[0]
    return os.path.dirname(s)


def exists(p) -> bool:
    return path(p).exists()


def isdir(p) -> bool:
    return path(p).is_dir()


def isfile(p) -> bool:
    q = path(p)
    return q.exists() and not q.is_dir()


def makedirs(p) -> None:
    """Create a folder and its parents (on object stores folders are implicit:
    nothing is created there)."""
    if not is_remote(p):
        os.makedirs(normalize(p), exist_ok=True)


def listdir(p) -> list[str]:
    """Sorted names in a folder ([] when it does not exist)."""
    q = path(p)
    if not q.exists():
        return []
    return sorted(c.name for c in q.iterdir())


def read_bytes(p) -> bytes:
    return path(p).read_bytes()


def read_text(p) -> str:
    return path(p).read_text()


def read_json(p) -> Any:
    return json.loads(read_text(p))


def open_binary(p):
    """A seekable binary file object for reading (zip archives, torch.load)."""
    return path(p).open("rb")


def write_bytes(p, data: bytes) -> None:
    """Write a whole file atomically (see the module docstring)."""
    target = normalize(p)
    if is_remote(target):
        with path(target).open("wb") as f:
            f.write(data)
        return
    os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
    tmp = f"{target}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(p, text: str) -> None:
    write_bytes(p, text.encode("utf-8"))


def write_json(p, obj: Any, indent: int | None = 1) -> None:
    write_text(p, json.dumps(obj, indent=indent, default=str))


def save_figure(fig, p, dpi: int = 100) -> None:
    """A matplotlib figure as PNG (format from the name's extension), atomically."""
    buf = io.BytesIO()
    ext = os.path.splitext(os.fspath(p))[1].lstrip(".").lower() or "png"
    fig.savefig(buf, format=ext, dpi=dpi)
    write_bytes(p, buf.getvalue())


def rmtree(p) -> None:
    q = path(p)
    if q.exists():
        if is_remote(p):
            q.rmtree()
        else:
            shutil.rmtree(normalize(p))


def copy_tree(src, dst) -> None:
    """Copy a folder (local or remote, either side), file by file."""
    src, dst = normalize(src), normalize(dst)
    for name in listdir(src):
        s, d = join(src, name), join(dst, name)
        if isdir(s):
            copy_tree(s, d)
        else:
            write_bytes(d, read_bytes(s))


def replace_tree(src, dst) -> None:
    """Move folder ``src`` to ``dst``, replacing it: one rename on local disks;
    on object stores a copy then a delete (not atomic: no rename exists)."""
    src, dst = normalize(src), normalize(dst)
    if not is_remote(src) and not is_remote(dst):
        if os.path.exists(dst):
            shutil.rmtree(dst)
        os.replace(src, dst)
        return
    rmtree(dst)
    copy_tree(src, dst)
    rmtree(src)


@contextlib.contextmanager
def local_output(p) -> Iterator[str]:
    """A local file name to write ``p`` through, for writers that take only file
    names (ffmpeg): the finished file is moved or uploaded to ``p`` on success,
    nothing is written on error."""
    target = normalize(p)
    suffix = os.path.splitext(target)[1]
    if not is_remote(target):
        os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
        tmp = f"{target}.tmp-{os.getpid()}{suffix}"
        try:
            yield tmp
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return
    with tempfile.TemporaryDirectory(prefix="rtpca-") as d:
        local = os.path.join(d, "out" + suffix)
        yield local
        with open(local, "rb") as f:
            write_bytes(target, f.read())


class StagedDir:
    """A local folder for writers that take only local paths (tf.summary,
    jax.profiler) whose output belongs at ``target``: ``target`` itself when
    local; otherwise a temporary folder whose files :meth:`sync` uploads
    (whole files: object stores cannot append) and :meth:`close` removes."""

    def __init__(self, target, prefix: str = "rtpca-"):
        self.target = normalize(target)
        self.remote = is_remote(self.target)
        self.path = tempfile.mkdtemp(prefix=prefix) if self.remote else self.target
        makedirs(self.path)

    def sync(self) -> None:
        if self.remote:
            copy_tree(self.path, self.target)

    def close(self) -> None:
        self.sync()
        if self.remote:
            shutil.rmtree(self.path, ignore_errors=True)


class UnreachableError(OSError):
    pass


def check_reachable(p, timeout_s: float = 20.0, *, what: str = "path") -> None:
    """Fail fast, naming ``p``, when a remote location cannot be reached.

    Object-store clients retry for minutes on a dead endpoint; this asks once
    whether ``p`` (and for ``gs://``/``s3://`` its bucket) exists, in a
    thread, and gives up after ``timeout_s``.  Local paths pass at once.
    """
    if not is_remote(p):
        return
    s = normalize(p)
    scheme, rest = s.split("://", 1)
    bucket = f"{scheme}://{rest.split('/', 1)[0]}"
    result: dict = {}

    def probe():
        try:
            result["bucket"] = path(bucket).exists()
        except BaseException as e:  # noqa: BLE001 - reported below
            result["error"] = e

    t = threading.Thread(target=probe, daemon=True, name="rtpca-reachable")
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        raise UnreachableError(f"{what} {s}: no answer from {bucket} within {timeout_s:.0f} s "
                               f"(network, credentials or endpoint; STORAGE_EMULATOR_HOST="
                               f"{os.environ.get('STORAGE_EMULATOR_HOST', 'unset')})")
    if "error" in result:
        e = result["error"]
        raise UnreachableError(f"{what} {s}: cannot reach {bucket} ({type(e).__name__}: "
                               f"{str(e).splitlines()[0][:300] if str(e) else ''})") from e
    if not result.get("bucket"):
        raise UnreachableError(f"{what} {s}: bucket {bucket} does not exist or is not visible")
