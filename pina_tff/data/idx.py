"""Reader of IDX files (the MNIST / Fashion-MNIST array format), plain or gzip-compressed.

Layout (big-endian): two zero bytes, a dtype code byte, a byte `ndim`, then `ndim`
uint32 dimension sizes, then the C-order data. Dtype codes: 0x08 uint8, 0x09 int8,
0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64. A file is read as gzip when it starts
with the gzip magic bytes 1f 8b, whatever its name.

Any problem (missing file, bad gzip stream, wrong magic, unknown dtype code, fewer or more
data bytes than the header's dims promise) raises `DataError` naming the file.
"""
import gzip
import io
import os
import zlib
from typing import BinaryIO, Optional, Tuple

import numpy as np

from pina_tff.errors import DataError

DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def _open(path: str) -> BinaryIO:
  if not os.path.isfile(path):
    raise DataError(f"{path}: IDX file not found")
  f = open(path, "rb")
  head = f.read(2)
  f.seek(0)
  if head == _GZIP_MAGIC:
    return gzip.GzipFile(fileobj=f, mode="rb")
  return f


def _read_exact(f: BinaryIO, n: int, path: str, what: str) -> bytes:
  data = f.read(n)
  if len(data) != n:
    raise DataError(f"{path}: truncated IDX file: {what} needs {n} bytes, found {len(data)}")
  return data


def _header(f: BinaryIO, path: str) -> Tuple[np.dtype, Tuple[int, ...]]:
  magic = _read_exact(f, 4, path, "the magic number")
  if magic[0] != 0 or magic[1] != 0:
    raise DataError(f"{path}: not an IDX file (magic number {magic.hex()}; expected "
                    "0000<dtype code><ndim>)")
  code, ndim = magic[2], magic[3]
  if code not in DTYPES:
    raise DataError(f"{path}: unknown IDX dtype code 0x{code:02x}; expected one of "
                    f"{', '.join(f'0x{c:02x}' for c in DTYPES)}")
  if ndim == 0:
    raise DataError(f"{path}: IDX header has 0 dimensions; expected at least 1")
  dims = np.frombuffer(_read_exact(f, 4 * ndim, path, f"{ndim} dimension sizes"), ">u4")
  return DTYPES[code], tuple(int(d) for d in dims)


def read_idx_header(path: str) -> Tuple[np.dtype, Tuple[int, ...]]:
  """(dtype, dims) from the header of the IDX file `path`; DataError if it is not one."""
  try:
    with _open(path) as f:
      return _header(f, path)
  except (OSError, EOFError, zlib.error) as e:
    raise DataError(f"{path}: corrupt IDX file ({type(e).__name__}: {e})") from None


def read_idx(path: str, max_items: Optional[int] = None) -> np.ndarray:
  """The array stored in IDX file `path` (gzip or plain), native byte order.

  Args:
    path: file path.
    max_items: read only the first `max_items` entries along axis 0 (the rest of the
      file is not read nor checked); None reads and checks the whole file.

  Returns:
    np.ndarray of the header's dims (first dim min(dims[0], max_items)) and dtype.

  Raises:
    DataError naming `path`: missing file, corrupt gzip stream, wrong magic number,
    unknown dtype code, or a data size that differs from the header's dims.
  """
  try:
    with _open(path) as f:
      dtype, dims = _header(f, path)
      n0 = dims[0] if max_items is None else min(dims[0], int(max_items))
      shape = (n0,) + dims[1:]
      nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
      data = _read_exact(f, nbytes, path, f"data of shape {list(dims)} ({dtype.name})")
      if max_items is None and f.read(1):
        rest = 1 + len(f.read())
        raise DataError(f"{path}: IDX file has {rest} bytes after the data of shape "
                        f"{list(dims)} ({dtype.name}); expected none (size mismatch)")
  except (OSError, EOFError, zlib.error) as e:
    # gzip raises BadGzipFile (an OSError), EOFError on a cut stream, zlib.error on bad data.
    raise DataError(f"{path}: corrupt IDX file ({type(e).__name__}: {e})") from None
  return np.frombuffer(data, dtype).astype(dtype.newbyteorder("="), copy=False).reshape(shape)


def write_idx(path: str, array: np.ndarray, compress: Optional[bool] = None) -> str:
  """Writes `array` as an IDX file (gzip when `compress`, default: path ends in .gz).

  Used by tests to make small IDX files; dtype must be one of DTYPES' types.
  """
  array = np.asarray(array)
  codes = {np.dtype(d).newbyteorder("=").str: c for c, d in DTYPES.items()}
  key = array.dtype.newbyteorder("=").str
  if key not in codes or array.ndim == 0:
    raise ValueError(f"cannot write dtype {array.dtype} / ndim {array.ndim} as IDX")
  code = codes[key]
  buf = io.BytesIO()
  buf.write(bytes([0, 0, code, array.ndim]))
  buf.write(np.asarray(array.shape, ">u4").tobytes())
  buf.write(np.ascontiguousarray(array, DTYPES[code]).tobytes())
  compress = path.endswith(".gz") if compress is None else compress
  data = gzip.compress(buf.getvalue(), mtime=0) if compress else buf.getvalue()
  with open(path, "wb") as f:
    f.write(data)
  return path
