"""The path layer on local paths and on a real GCS-API server (fake-gcs-server on localhost)."""

import os

import pytest

from sapnet_jax import fileio


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
