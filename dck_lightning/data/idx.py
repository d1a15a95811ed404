"""Reader for the IDX format of the MNIST files, plain or gzip-compressed.

``torchvision.datasets.mnist.read_sn3_pascalvincent_tensor`` only reads
uncompressed files (torchvision decompresses the downloaded ``.gz`` files next
to them first). This reader takes either, detected from the gzip magic bytes,
so a read-only directory holding only the ``.gz`` files loads as it is.

Format (big-endian): two zero bytes, a type code, the number of dimensions
``n``, ``n`` 32-bit sizes, then the data.
"""

import gzip
import struct
from pathlib import Path
from typing import Union

import numpy as np
import torch

__all__ = ["read_idx"]

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: Union[str, Path]) -> torch.Tensor:
    """Read an IDX file (``*-ubyte`` or ``*-ubyte.gz``) into a tensor of its shape and dtype.

    Args:
        path: the file; gzip compression is detected from the content, not the name.

    Returns:
        ``Tensor[d0, d1, ...]``, e.g. ``uint8`` ``Tensor[N, 28, 28]`` for MNIST images and
        ``uint8`` ``Tensor[N]`` for labels.

    Raises:
        ValueError: the file is not IDX or is truncated.
    """
    path = Path(path)
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == _GZIP_MAGIC:
        data = gzip.decompress(data)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {data[:4].hex()})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = _IDX_DTYPES[data[2]]
    count = int(np.prod(shape, dtype=np.int64))
    if len(data) - header < count * dtype.itemsize:
        raise ValueError(
            f"{path}: IDX data truncated, shape {shape} needs {count * dtype.itemsize} bytes, "
            f"file has {len(data) - header}"
        )
    array = np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(shape)
    return torch.from_numpy(array.astype(dtype.newbyteorder("="), copy=True))
