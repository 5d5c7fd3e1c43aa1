"""Reading PyTorch checkpoints without torch.

pth_zip.pth / pth_legacy.pth and pth_expected.npz were written by torch 2.13 through
tests/fixtures/make_fixtures.py (the expected arrays are what torch reads back), so these
tests compare our reader with torch's, for both file formats, exactly.
"""

import io
import os
import pickle
import zipfile

import numpy as np
import pytest

from support.paths import FIXTURES, shared_path
from sapnet_jax.weights.pth import PthError, load_state_dict


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_reads_both_formats_exactly(fmt):
  got = load_state_dict(FIXTURES / f"pth_{fmt}.pth")
  expected = np.load(FIXTURES / "pth_expected.npz")
  assert list(got) == list(expected.files)  # file order, wrapper dict unwrapped
  for key in expected.files:
    want = expected[key]
    have = got[key]
    if key == "j.bf16":
      assert have.dtype.name == "bfloat16"
      have = have.astype(np.float32)
    else:
      assert have.dtype == want.dtype, key
    assert have.shape == want.shape, key
    np.testing.assert_array_equal(have, want, err_msg=key)
  assert got["e.transposed"].flags["C_CONTIGUOUS"]


class _Evil:
  def __reduce__(self):
    return (os.system, ("touch pwned_by_pickle",))


def test_refuses_code_in_pickles(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  path = tmp_path / "evil.pth"
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("archive/data.pkl", pickle.dumps({"w": _Evil()}, protocol=2))
  with pytest.raises(PthError, match=r"evil\.pth: refusing to unpickle .*system"):
    load_state_dict(path)
  assert not (tmp_path / "pwned_by_pickle").exists()


def test_truncated_file_names_the_file(tmp_path):
  data = (FIXTURES / "pth_legacy.pth").read_bytes()
  path = tmp_path / "cut.pth"
  path.write_bytes(data[: len(data) - 40])
  with pytest.raises(PthError, match=r"cut\.pth: .*(truncated|ends)"):
    load_state_dict(path)


def test_not_a_checkpoint(tmp_path):
  path = tmp_path / "notes.pth"
  path.write_text("hello")
  with pytest.raises(PthError, match=r"notes\.pth"):
    load_state_dict(path)
  plain = tmp_path / "list.pth"
  plain.write_bytes(_legacy_stream([1, 2, 3]))
  with pytest.raises(PthError, match=r"list\.pth: expected a state_dict"):
    load_state_dict(plain)


def _legacy_stream(obj) -> bytes:
  buf = io.BytesIO()
  for part in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}, obj, []):
    pickle.dump(part, buf, protocol=2)
  return buf.getvalue()


def test_official_checkpoints_match_their_key_lists():
  # KEYS.txt in ../shared lists every tensor's name, shape and dtype as torch reports them.
  for rel in ("weights/sapnet_official", "weights/prenet/Rain100H/PReNet6",
              "weights/prenet/Rain100H/PRN6"):
    folder = shared_path(rel)
    sd = load_state_dict(folder / "net_latest.pth")
    listed = [line.split(" ", 1) for line in (folder / "KEYS.txt").read_text().splitlines()
              if line and not line.startswith("total")]
    assert [k for k, _ in listed] == list(sd)
    for key, rest in listed:
      shape = tuple(int(n) for n in rest[rest.index("(") + 1: rest.index(")")].split(",") if n.strip())
      assert sd[key].shape == shape and sd[key].dtype == np.float32, key
