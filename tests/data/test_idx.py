"""IDX reader (pina_tff.data.idx) on small files written by the test."""
import gzip
import struct

import numpy as np
import pytest

from pina_tff.data import idx
from pina_tff.errors import DataError


def _hand_made(dtype_code, dims, payload: bytes) -> bytes:
  """IDX bytes built with struct, independently of idx.write_idx."""
  return bytes([0, 0, dtype_code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + payload


@pytest.mark.parametrize("compress", [False, True])
def test_reads_hand_made_files(tmp_path, compress):
  values = [1, 2, 255, 0, 7, 9]
  raw = _hand_made(0x08, (2, 3), bytes(values))
  ints = [-5, 70000, 3]
  raw_i32 = _hand_made(0x0C, (3,), struct.pack(">3i", *ints))
  floats = [0.5, -1.25]
  raw_f32 = _hand_made(0x0D, (1, 2), struct.pack(">2f", *floats))
  for name, data, expected in [("u8", raw, np.array(values, np.uint8).reshape(2, 3)),
                               ("i32", raw_i32, np.array(ints, np.int32)),
                               ("f32", raw_f32, np.array([floats], np.float32))]:
    path = tmp_path / (name + (".gz" if compress else ""))
    path.write_bytes(gzip.compress(data) if compress else data)
    got = idx.read_idx(str(path))
    assert got.dtype == expected.dtype and got.dtype.isnative
    np.testing.assert_array_equal(got, expected)
    assert idx.read_idx_header(str(path)) == (idx.DTYPES[data[2]], expected.shape)


def test_write_read_roundtrip_and_prefix(tmp_path):
  a = np.random.default_rng(0).integers(0, 256, (7, 28, 28), dtype=np.uint8)
  for name in ("a.gz", "a"):
    p = idx.write_idx(str(tmp_path / name), a)
    np.testing.assert_array_equal(idx.read_idx(p), a)
    np.testing.assert_array_equal(idx.read_idx(p, max_items=3), a[:3])
    np.testing.assert_array_equal(idx.read_idx(p, max_items=100), a)
  # gzip is detected by content, not by name.
  p = idx.write_idx(str(tmp_path / "plain-name"), a, compress=True)
  np.testing.assert_array_equal(idx.read_idx(p), a)


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("data, match", [
    (b"\x08\x03\x00\x00" + b"\x00" * 20, "not an IDX file"),            # wrong magic
    (bytes([0, 0, 0x07, 1]) + struct.pack(">I", 2) + b"ab", "unknown IDX dtype code 0x07"),
    (bytes([0, 0, 0x08, 0]), "0 dimensions"),
    (bytes([0, 0, 0x08, 3]) + struct.pack(">I", 5), "truncated IDX file: 3 dimension sizes"),
    (bytes([0, 0, 0x08, 2]) + struct.pack(">2I", 3, 4) + b"x" * 11,
     r"truncated IDX file: data of shape \[3, 4\].*needs 12 bytes, found 11"),
    (bytes([0, 0, 0x08, 1]) + struct.pack(">I", 3) + b"abcd", "1 bytes after the data"),
    (b"\x00\x00", "truncated IDX file: the magic number"),
])
def test_bad_files_raise_data_error_naming_the_file(tmp_path, compress, data, match):
  path = tmp_path / ("bad.gz" if compress else "bad")
  path.write_bytes(gzip.compress(data) if compress else data)
  with pytest.raises(DataError, match=match) as e:
    idx.read_idx(str(path))
  assert str(e.value).startswith(str(path) + ":")


def test_cut_and_corrupt_gzip_streams(tmp_path):
  a = np.random.default_rng(1).integers(0, 256, (50, 28, 28), dtype=np.uint8)
  good = gzip.compress(_hand_made(0x08, a.shape, a.tobytes()))
  cut = tmp_path / "cut.gz"
  cut.write_bytes(good[:len(good) // 2])
  with pytest.raises(DataError, match=r"cut\.gz: (corrupt|truncated) IDX file"):
    idx.read_idx(str(cut))
  flipped = bytearray(good)
  for k in range(40, 60):
    flipped[k] ^= 0xFF
  bad = tmp_path / "bad.gz"
  bad.write_bytes(bytes(flipped))
  with pytest.raises(DataError, match=r"bad\.gz: (corrupt|truncated) IDX file"):
    idx.read_idx(str(bad))
  with pytest.raises(DataError, match="missing.gz: IDX file not found"):
    idx.read_idx(str(tmp_path / "missing.gz"))


if __name__ == "__main__":
  raise SystemExit(pytest.main([__file__, "-q"]))
