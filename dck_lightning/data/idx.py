"""Reader and writer for the IDX format of the MNIST files, plain or gzip-compressed.

``torchvision.datasets.mnist.read_sn3_pascalvincent_tensor`` only reads
uncompressed files (torchvision decompresses the downloaded ``.gz`` files next
to them first). This reader takes either, detected from the gzip magic bytes,
so a read-only directory holding only the ``.gz`` files loads as it is.

Format (big-endian): two zero bytes, a type code, the number of dimensions
``n``, ``n`` 32-bit sizes, then the data.

:func:`write_idx` writes the unsigned-byte files MNIST ships (type ``0x08``), for
splits and fixtures made from other data (benchmarks, tests, scripts).
"""

import gzip
import struct
from pathlib import Path
from typing import Union

import numpy as np
import torch

__all__ = ["read_idx", "write_idx"]

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


def write_idx(path: Union[str, Path], array: np.ndarray) -> Path:
    """Write an array of values in ``[0, 255]`` as an unsigned-byte IDX file (type ``0x08``).

    Args:
        path: the file; gzip-compressed when its name ends in ``.gz`` (as MNIST ships them).
            Missing parent folders are made.
        array: ``[d0, d1, ...]`` of any integer dtype, e.g. ``[N, 28, 28]`` images or ``[N]``
            labels; stored as ``uint8``.

    Returns:
        ``path``, which :func:`read_idx` reads back to ``array`` as ``uint8``.

    Raises:
        ValueError: a value lies outside ``[0, 255]`` (it would not survive the ``uint8``).
    """
    path = Path(path)
    array = np.asarray(array)
    if array.size and (array.min() < 0 or array.max() > 255):
        raise ValueError(
            f"{path}: IDX type 0x08 holds bytes, got values in [{array.min()}, {array.max()}]"
        )
    array = np.ascontiguousarray(array, dtype=np.uint8)
    payload = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    payload += array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload) if path.name.endswith(".gz") else payload)
    return path
