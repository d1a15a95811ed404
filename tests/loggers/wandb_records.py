"""Read the records of an offline W&B run (``offline-run-*/run-<id>.wandb``).

The file is W&B's LevelDB-style log: a 7-byte header (``:W&B``, magic ``0xBEE1``, version 0),
then 32 KiB blocks of chunks, each ``<crc32 u32><length u16><type u8>`` + payload (type 1: a
whole record; 2, 3, 4: first, middle and last piece of one), a block's tail shorter than a chunk
header is zero padding. Every record is a ``wandb_internal_pb2.Record`` protobuf. wandb >= 0.19
writes these from its Go core and no longer ships a Python reader.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Callable, Optional

from wandb.proto import wandb_internal_pb2

BLOCK = 32768
CHUNK_HEADER = struct.Struct("<IHB")
FILE_HEADER = struct.Struct("<4sHB")
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> list[wandb_internal_pb2.Record]:
    data = Path(path).read_bytes()
    ident, magic, version = FILE_HEADER.unpack_from(data)
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), f"{path} is not a W&B run file"
    records, pending, pos = [], b"", FILE_HEADER.size
    while pos + CHUNK_HEADER.size <= len(data):
        left = BLOCK - pos % BLOCK
        if left < CHUNK_HEADER.size:
            pos += left
            continue
        _, length, kind = CHUNK_HEADER.unpack_from(data, pos)
        pos += CHUNK_HEADER.size
        if kind == 0 and length == 0:
            break
        chunk, pos = data[pos : pos + length], pos + length
        if kind == FULL:
            raw = chunk
        elif kind == FIRST:
            pending = chunk
            continue
        elif kind == MIDDLE:
            pending += chunk
            continue
        else:
            raw = pending + chunk
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        records.append(record)
    return records


def artifacts(
    run_folder: Path, until: Optional[Callable[[list[dict]], bool]] = None, timeout: float = 60
) -> list[dict]:
    """The artifacts an offline run logged, in order: name, type, aliases, metadata, files.

    W&B's service writes artifact records after staging their files, possibly after the run
    has finished: with ``until``, read again until ``until(artifacts)`` holds (or ``timeout``).
    """
    deadline = time.monotonic() + timeout
    while True:
        found = _artifacts(run_folder)
        if until is None or until(found) or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def _artifacts(run_folder: Path) -> list[dict]:
    (path,) = Path(run_folder).glob("run-*.wandb")
    out = []
    for record in read_records(path):
        if record.WhichOneof("record_type") != "artifact":
            continue
        artifact = record.artifact
        out.append(
            {
                "name": artifact.name,
                "type": artifact.type,
                "aliases": list(artifact.aliases),
                "metadata": json.loads(artifact.metadata or "{}"),
                "files": {entry.path: entry.digest for entry in artifact.manifest.contents},
            }
        )
    return out
