"""The one path layer: every file sapnet_jax reads or writes goes through here.

Paths are `etils.epath` paths, so a URI (`gs://bucket/run`, `s3://...`, any scheme epath's
fsspec backend knows) works wherever a local path does. `gs://` needs gcsfs
(`pip install -e ".[gcs]"`); without TensorFlow installed epath reaches buckets through fsspec.

Atomic writes (`atomic_write`), by kind of store:
  * local files: a temporary file in the same folder, fsync'ed, then `os.replace`d over the
    target: readers see the old file or the whole new one, even after a crash. The temporary
    name is random and created exclusively (O_EXCL | O_NOFOLLOW), so a file or symlink planted
    at a guessable name is never followed or overwritten; it is removed on an error and, when
    the write runs on the main thread, on SIGINT/SIGTERM (the handler removes the live
    temporary files, then hands the signal to the handler it replaced, or to the default).
  * object stores (gs://, s3://, ...): the bytes are gathered in memory and sent as one object
    upload. GCS and S3 make an object visible only once its upload has completed, so readers
    see the old object or the whole new one; there is no rename there (a "rename" is a copy
    and a delete), so none is used.

Some readers cannot open a URI at all (ArrayRecord's and Pillow's C++/C code, archives a
dataset builder walks with os calls): `local_copy` mirrors a remote file or folder into a
local cache once and returns the local path.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import shutil
import signal
import tempfile
import threading
from typing import BinaryIO, Iterator

import fsspec
from etils import epath

PathLike = str | os.PathLike

# Buckets are also written by other processes and hosts (a pod's others, a resumed run):
# gcsfs caches folder listings forever by default, which would hide their new objects (a
# checkpoint step saved by another process, measured). A user's own fsspec setting wins.
for _protocol in ("gs", "gcs"):
  fsspec.config.conf.setdefault(_protocol, {}).setdefault("use_listings_cache", False)


def is_remote(path: PathLike) -> bool:
  """True for a URI with a scheme other than file:// (gs://, s3://, ...)."""
  text = os.fspath(path)
  return "://" in text and not text.startswith("file://")


def as_path(path: PathLike) -> epath.Path:
  """An epath.Path; a clear error when a bucket's file system library is not installed."""
  text = os.fspath(path)
  if text.startswith("gs://"):
    try:
      # deferred: gcsfs is optional (the gcs extra); only gs:// paths need it
      import gcsfs  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    except ImportError:
      raise ImportError(f"{text}: gs:// paths need gcsfs: pip install -e '.[gcs]' "
                        "(or pip install gcsfs)") from None
  return epath.Path(text)


def join(base: PathLike, *parts: str) -> str:
  """`base/part/...` as a string: os.path.join for local paths, `/` for URIs."""
  if is_remote(base):
    return "/".join([os.fspath(base).rstrip("/"), *(p.strip("/") for p in parts)])
  return os.path.join(os.fspath(base), *parts)


def absolute(path: PathLike) -> str:
  """An absolute local path; a URI unchanged (never os.path.abspath on a URI)."""
  text = os.fspath(path)
  return text if is_remote(text) else os.path.abspath(os.path.expanduser(text))


def identities(paths) -> set:
  """What tells files apart, for checking that an output is none of the inputs: for a local
  path its real path (links resolved) and, if it exists, its (device, inode), which also
  catches hard links and case-insensitive names; for a URI its text, its `//` runs collapsed
  after the scheme. Two paths name one file if their sets meet."""
  found = set()
  for path in paths:
    text = os.fspath(path)
    if is_remote(text):
      scheme, _, rest = text.partition("://")
      found.add(scheme + "://" + "/".join(p for p in rest.split("/") if p not in ("", ".")))
      continue
    found.add(os.path.normcase(os.path.realpath(os.path.expanduser(text))))
    with contextlib.suppress(OSError):
      stat = os.stat(text)
      found.add((stat.st_dev, stat.st_ino))
  return found


def basename(path: PathLike) -> str:
  return os.fspath(path).rstrip("/").rsplit("/", 1)[-1] if is_remote(path) else \
      os.path.basename(os.fspath(path))


def exists(path: PathLike) -> bool:
  return as_path(path).exists()


def is_dir(path: PathLike) -> bool:
  return as_path(path).is_dir()


def makedirs(path: PathLike) -> None:
  """Creates the folder and its parents (a no-op on object stores, which have none)."""
  if not is_remote(path):
    os.makedirs(os.fspath(path), exist_ok=True)


def listdir(path: PathLike) -> list[str]:
  """The names of the entries of a folder, sorted."""
  return sorted(p.name for p in as_path(path).iterdir())


def read_bytes(path: PathLike) -> bytes:
  return as_path(path).read_bytes()


def read_text(path: PathLike) -> str:
  return read_bytes(path).decode("utf-8")


def open_read(path: PathLike) -> BinaryIO:
  """A binary file object for reading: the file itself, or the whole object in memory.
  Raises FileNotFoundError / IsADirectoryError for both kinds of path (a bucket reads a
  "folder" as zero bytes instead of failing)."""
  if not is_remote(path):
    return open(os.fspath(path), "rb")
  data = read_bytes(path)
  if not data and is_dir(path):
    raise IsADirectoryError(path)
  return io.BytesIO(data)


def printable(text: PathLike) -> str:
  """`text` with each non-printable character escaped as Python would (a newline as \\n, an
  escape as \\x1b): every name a command prints goes through here, so a file name cannot forge
  or hide a line of output."""
  text = os.fspath(text)
  if isinstance(text, bytes):
    text = os.fsdecode(text)
  if text.isprintable():
    return text
  return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


_live_temps: set[str] = set()  # temporary files being written, removed on SIGINT/SIGTERM
_replaced_handlers: dict[int, object] = {}
_CLEANUP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _remove_live_temps(signum: int, frame) -> None:
  for tmp in list(_live_temps):
    with contextlib.suppress(OSError):
      os.unlink(tmp)
  _live_temps.clear()
  previous = _replaced_handlers.get(signum, signal.SIG_DFL)
  if callable(previous):
    previous(signum, frame)  # e.g. Python's KeyboardInterrupt, uvicorn's or absl's handler
  elif previous != signal.SIG_IGN:  # the default action (or one set outside Python): die of it
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_cleanup() -> None:
  # Only the main thread may set handlers; a write elsewhere is still cleaned on errors.
  if threading.current_thread() is not threading.main_thread():
    return
  for signum in _CLEANUP_SIGNALS:
    current = signal.getsignal(signum)
    if current is not _remove_live_temps:
      _replaced_handlers[signum] = current
      signal.signal(signum, _remove_live_temps)


def _create_temp(directory: str, name: str) -> tuple[int, str]:
  for _ in range(100):
    tmp = os.path.join(directory, f".{name[:80]}.{secrets.token_hex(8)}.tmp")
    try:
      # 0o666 less the umask, as a plain open would give the target.
      return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
                     | getattr(os, "O_CLOEXEC", 0), 0o666), tmp
    except FileExistsError:
      continue
  raise FileExistsError(f"{directory}: cannot create a temporary file for {name}")


@contextlib.contextmanager
def atomic_write(path: PathLike) -> Iterator[BinaryIO]:
  """Yields a binary file that replaces `path` only if the block finishes without error
  (see the module docstring for what "atomic" means on each kind of store)."""
  if is_remote(path):
    buffer = io.BytesIO()
    yield buffer
    as_path(path).write_bytes(buffer.getvalue())  # one object upload
    return
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  _install_cleanup()
  # Same directory, so os.replace is a rename within one filesystem; it replaces a symlink at
  # `path` itself, never the file it points to.
  fd, tmp = _create_temp(directory, os.path.basename(path))
  _live_temps.add(tmp)
  try:
    with os.fdopen(fd, "wb") as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    _live_temps.discard(tmp)
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp)


def write_bytes(path: PathLike, data: bytes) -> None:
  with atomic_write(path) as f:
    f.write(data)


def cache_dir() -> str:
  """sapnet_jax's local cache: $SAPNET_JAX_CACHE or ~/.cache/sapnet_jax."""
  return os.environ.get("SAPNET_JAX_CACHE") or os.path.join(
      os.path.expanduser("~"), ".cache", "sapnet_jax")


def mirror_path(uri: PathLike) -> str:
  """Where `local_copy` keeps a copy of `uri`: CACHE/mirror/SCHEME/BUCKET/PATH."""
  scheme, _, rest = os.fspath(uri).partition("://")
  return os.path.join(cache_dir(), "mirror", scheme, *rest.strip("/").split("/"))


def local_copy(path: PathLike) -> str:
  """A local path holding the file or folder at `path`: the path itself when local, else a
  copy in the local cache, made once. The copy is assembled in a temporary folder and renamed
  into place, so concurrent processes on one machine never see half a copy."""
  if not is_remote(path):
    return os.fspath(path)
  src, dst = as_path(path), mirror_path(path)
  if os.path.exists(dst):
    return dst
  parent = os.path.dirname(dst)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".incoming.", dir=parent)
  try:
    staged = os.path.join(tmp, "x")
    if src.is_dir():
      _download_tree(src, staged)
    else:
      with open(staged, "wb") as f:
        f.write(src.read_bytes())
    try:
      os.replace(staged, dst)
    except OSError:  # another process put its copy there first: same content, keep it
      if not os.path.exists(dst):
        raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return dst


def _download_tree(src: epath.Path, dst: str) -> None:
  os.makedirs(dst, exist_ok=True)
  for entry in src.iterdir():
    target = os.path.join(dst, entry.name)
    if entry.is_dir():
      _download_tree(entry, target)
    else:
      with open(target, "wb") as f:
        f.write(entry.read_bytes())


def upload_tree(src: PathLike, dst: PathLike, last: tuple[str, ...] = ()) -> None:
  """Copies the local folder `src` to `dst` (any path), file by file; names in `last` (at
  any depth) are copied after all others, so their presence marks a complete copy."""
  src = os.fspath(src)
  later = []
  for root, _, files in os.walk(src):
    rel = os.path.relpath(root, src)
    for name in sorted(files):
      target = join(dst, name) if rel == "." else join(dst, *rel.split(os.sep), name)
      if name in last:
        later.append((os.path.join(root, name), target))
      else:
        write_bytes(target, _read_local(os.path.join(root, name)))
  for local, target in later:
    write_bytes(target, _read_local(local))


def _read_local(path: str) -> bytes:
  with open(path, "rb") as f:
    return f.read()
