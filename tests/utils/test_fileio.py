"""The path layer on local paths and on a real GCS-API server (fake-gcs-server on localhost)."""

import os
import secrets
import signal
import subprocess
import sys

import pytest

from support.paths import REPO
from sapnet_jax.utils import fileio


def test_uris_are_never_made_local():
  assert fileio.absolute("gs://b/run") == "gs://b/run"
  assert fileio.absolute("run") == os.path.join(os.getcwd(), "run")
  assert fileio.join("gs://b/run/", "checkpoints", "3") == "gs://b/run/checkpoints/3"
  assert fileio.join("run", "checkpoints") == os.path.join("run", "checkpoints")
  assert fileio.is_remote("s3://x/y") and not fileio.is_remote("/x/y")
  assert not fileio.is_remote("file:///x")


def test_local_atomic_write_keeps_the_old_file_on_error(tmp_path):
  path = tmp_path / "sub" / "a.txt"
  fileio.write_bytes(path, b"old")
  with pytest.raises(RuntimeError):
    with fileio.atomic_write(path) as f:
      f.write(b"half")
      raise RuntimeError("interrupted")
  assert path.read_bytes() == b"old"
  assert os.listdir(path.parent) == ["a.txt"]  # no temporary file left


def test_bucket_write_read_list_and_atomic_upload(gcs_bucket):
  path = fileio.join(gcs_bucket, "run", "a.txt")
  fileio.write_bytes(path, b"old")
  with pytest.raises(RuntimeError):
    with fileio.atomic_write(path) as f:
      f.write(b"half")
      raise RuntimeError("interrupted")
  assert fileio.read_bytes(path) == b"old"  # nothing was uploaded
  fileio.write_bytes(path, b"new")
  assert fileio.read_text(path) == "new"
  assert fileio.listdir(fileio.join(gcs_bucket, "run")) == ["a.txt"]
  assert fileio.exists(path) and not fileio.exists(fileio.join(gcs_bucket, "run", "b.txt"))
  assert fileio.is_dir(fileio.join(gcs_bucket, "run"))


def test_local_copy_mirrors_a_bucket_folder_once(gcs_bucket, tmp_path, monkeypatch):
  monkeypatch.setenv("SAPNET_JAX_CACHE", str(tmp_path / "cache"))
  src = tmp_path / "tree"
  (src / "d").mkdir(parents=True)
  (src / "a.bin").write_bytes(b"a")
  (src / "d" / "b.bin").write_bytes(b"b")
  (src / "done").write_bytes(b"")
  remote = fileio.join(gcs_bucket, "tree")
  fileio.upload_tree(src, remote, last=("done",))
  assert fileio.listdir(remote) == ["a.bin", "d", "done"]
  local = fileio.local_copy(remote)
  assert local.startswith(str(tmp_path / "cache"))
  assert open(os.path.join(local, "d", "b.bin"), "rb").read() == b"b"
  fileio.write_bytes(fileio.join(remote, "a.bin"), b"changed")
  assert fileio.local_copy(remote) == local  # made once
  assert open(os.path.join(local, "a.bin"), "rb").read() == b"a"
  assert fileio.local_copy(str(src)) == str(src)  # local paths are used in place


def test_objects_written_by_another_client_are_listed(gcs_server, gcs_bucket):
  """Another process (a pod's other host, a resumed run) adds objects: a listing made before
  must not hide them (gcsfs caches listings forever unless told not to)."""
  import urllib.request
  folder = fileio.join(gcs_bucket, "ckpt")
  fileio.write_bytes(fileio.join(folder, "2", "x"), b"")
  assert fileio.listdir(folder) == ["2"]
  bucket = gcs_bucket[len("gs://"):]
  req = urllib.request.Request(
      f"{gcs_server.url}/upload/storage/v1/b/{bucket}/o?uploadType=media&name=ckpt/4/x",
      data=b"", method="POST")
  urllib.request.urlopen(req, timeout=10).close()
  assert fileio.listdir(folder) == ["2", "4"]


def test_atomic_write_never_follows_a_planted_symlink(tmp_path, monkeypatch):
  victim = tmp_path / "victim.txt"
  victim.write_bytes(b"precious")
  folder = tmp_path / "out"
  folder.mkdir()
  # Links at the names an attacker could guess: the pid-based name, and the very name the next
  # random choice gives (forced here, so the clash is certain rather than unlikely).
  tokens = iter(["guessed", "fresh"])
  monkeypatch.setattr(secrets, "token_hex", lambda n: next(tokens))
  planted = [f".a.png.{os.getpid()}.tmp", ".a.png.guessed.tmp", ".a.png.tmp"]
  for name in planted:
    (folder / name).symlink_to(victim)
  (folder / "b.png").symlink_to(victim)  # at the target itself: replaced, not followed
  fileio.write_bytes(folder / "a.png", b"new a")
  monkeypatch.undo()
  fileio.write_bytes(folder / "b.png", b"new b")
  assert victim.read_bytes() == b"precious"
  assert (folder / "a.png").read_bytes() == b"new a" and not (folder / "a.png").is_symlink()
  assert (folder / "b.png").read_bytes() == b"new b" and not (folder / "b.png").is_symlink()
  assert sorted(os.listdir(folder)) == sorted(planted + ["a.png", "b.png"])  # no temp left
  assert all((folder / name).is_symlink() for name in planted)


_WRITER = """
import signal, sys, time
from sapnet_jax.utils import fileio
if sys.argv[2] == "own-handler":  # a handler the program set before (uvicorn's, absl's)
  def handler(signum, frame):
    open(sys.argv[3], "w").close()
    sys.exit(3)
  signal.signal(signal.SIGTERM, handler)
with fileio.atomic_write(sys.argv[1]) as f:
  f.write(b"half of it")
  f.flush()
  print("writing", flush=True)
  time.sleep(60)
"""


@pytest.mark.parametrize("how,code", [("default", -signal.SIGTERM), ("own-handler", 3)])
def test_sigterm_mid_write_leaves_no_temporary_file(tmp_path, how, code):
  folder, marker = tmp_path / "out", tmp_path / "handled"
  folder.mkdir()
  proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(folder / "a.png"), how,
                           str(marker)], stdout=subprocess.PIPE, text=True, cwd=REPO)
  try:
    assert proc.stdout.readline() == "writing\n"
    assert len(os.listdir(folder)) == 1  # the temporary file, mid-write
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == code
  finally:
    proc.kill()
    proc.wait()
  assert os.listdir(folder) == []  # neither a temporary file nor a half target
  assert marker.exists() == (how == "own-handler")  # the program's own handler still ran


def test_printable_escapes_what_could_forge_or_hide_a_line():
  assert fileio.printable("photos/a b.png") == "photos/a b.png"
  assert fileio.printable("evil\nerror: fake.png") == "evil\\nerror: fake.png"
  assert fileio.printable("a\rb\x1b[2Kc\u202ed\udcff") == "a\\rb\\x1b[2Kc\\u202ed\\udcff"
  assert "\n" not in fileio.printable("".join(map(chr, range(0x2030))))


def test_identities_see_through_links(tmp_path):
  (tmp_path / "photos").mkdir()
  (tmp_path / "photos" / "a.png").write_bytes(b"a")
  (tmp_path / "link").symlink_to(tmp_path / "photos", target_is_directory=True)
  os.link(tmp_path / "photos" / "a.png", tmp_path / "hard.png")
  a = fileio.identities([tmp_path / "photos" / "a.png"])
  assert a & fileio.identities([tmp_path / "link" / "a.png"])
  assert a & fileio.identities([tmp_path / "hard.png"])
  assert not a & fileio.identities([tmp_path / "photos" / "b.png"])
  assert fileio.identities(["gs://b//x/./y"]) == fileio.identities(["gs://b/x/y"])
