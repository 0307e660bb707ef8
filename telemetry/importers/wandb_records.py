"""The `.wandb` record format: the LevelDB-style framing of a W&B run log, read without the W&B SDK.

A 7-byte W&B header (":W&B", magic 0xBEE1, version 0), then 32 KiB blocks of chunks, each with a
7-byte header (checksum u32, length u16, type u8: FULL/FIRST/MIDDLE/LAST); a block tail under 7
bytes is zero padding. The checksum the SDK writes is CRC-32 (IEEE) over the type byte and the
data; CRC-32C is accepted as well (LevelDB's own choice). A torn tail is counted, not fatal; a
chunk with a bad checksum skips the rest of its block, as LevelDB readers do. `record_kind` reads
a record's type from the protobuf wire format without parsing it.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from telemetry.importers._common import ImportSourceError

_HEADER = struct.Struct("<4sHB")
_CHUNK = struct.Struct("<IHB")
_IDENT, _MAGIC = b":W&B", 0xBEE1
_BLOCK = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4
_TYPE_CRC = [zlib.crc32(bytes([t])) for t in range(5)]
_BOOKKEEPING = {1, 16, 19, 200}  # num, control, uuid, _info


# ---- the log framing ---------------------------------------------------------------------------

@dataclass(slots=True)
class LogScan:
    records: list[bytes]
    skipped_bytes: int = 0
    bad_chunks: int = 0
    truncated: bool = False


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_C_TABLE: list[int] = []


def _crc32c(data: bytes) -> int:
    """Pure-Python CRC-32C: only used for chunks whose CRC-32 does not match."""
    if not _C_TABLE:
        _C_TABLE.extend(_crc32c_table())
    crc = 0xFFFFFFFF
    for b in data:
        crc = _C_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _checksum_ok(crc: int, ctype: int, data: bytes) -> bool:
    if zlib.crc32(data, _TYPE_CRC[ctype]) == crc:
        return True
    c = _crc32c(bytes([ctype]) + data)
    masked = (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF  # LevelDB's masked form
    return crc in (c, masked)


def scan_log(raw: bytes | memoryview, path: str) -> LogScan:
    """Every complete record of a `.wandb` file; a torn tail is counted, not fatal."""
    if len(raw) < _HEADER.size:
        raise ImportSourceError(f"{path} is not a W&B .wandb file: it is only {len(raw)} bytes long")
    ident, magic, version = _HEADER.unpack_from(raw, 0)
    if ident != _IDENT or magic != _MAGIC:
        raise ImportSourceError(f"{path} is not a W&B .wandb file (no ':W&B' header): pass a run-*.wandb file "
                                "or a wandb/offline-run-* folder")
    if version != 0:
        raise ImportSourceError(f"{path} has W&B log version {version}; this flightlog reads version 0")
    out = LogScan([])
    view = memoryview(raw)
    n = len(raw)
    off = _HEADER.size
    parts: list[bytes] = []
    parts_bytes = 0
    unpack = _CHUNK.unpack_from
    crc32 = zlib.crc32
    while off < n:
        left = _BLOCK - off % _BLOCK
        if left < _CHUNK.size:  # zero padding at the end of a block
            off += left
            continue
        if off + _CHUNK.size > n:
            out.truncated = True
            out.skipped_bytes += n - off
            break
        crc, length, ctype = unpack(view, off)
        start = off + _CHUNK.size
        end = start + length
        if ctype == 0 and length == 0 and crc == 0:  # preallocated zeros: rest of the block is empty
            off += left
            continue
        if end > n or length > left - _CHUNK.size:
            out.truncated = end > n
            out.skipped_bytes += min(n, off + left) - off
            if end > n:
                break
            out.bad_chunks += 1
            off += left
            continue
        data = bytes(view[start:end])
        if ctype > _LAST or (crc32(data, _TYPE_CRC[ctype]) != crc and not _checksum_ok(crc, ctype, data)):
            out.bad_chunks += 1
            out.skipped_bytes += left
            parts, parts_bytes = [], 0
            off += left
            continue
        off = end
        if ctype == _FULL:
            if parts:  # a FIRST without its LAST: that record is lost
                out.skipped_bytes += parts_bytes
                parts, parts_bytes = [], 0
            out.records.append(data)
        elif ctype == _FIRST:
            out.skipped_bytes += parts_bytes
            parts, parts_bytes = [data], length + _CHUNK.size
        elif parts:
            parts.append(data)
            parts_bytes += length + _CHUNK.size
            if ctype == _LAST:
                out.records.append(b"".join(parts))
                parts, parts_bytes = [], 0
        else:  # MIDDLE/LAST without FIRST
            out.skipped_bytes += length + _CHUNK.size
    if parts:
        out.truncated = True
        out.skipped_bytes += parts_bytes
    return out


def _varint(rec: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = rec[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def record_kind(rec: bytes) -> int:
    """Field number of a Record's record_type, read from the wire without parsing the record.

    Skips `num` (1) and the bookkeeping fields control (16), uuid (19) and _info (200), which may
    come first. Lets the reader pass over records it does not use (output, files, telemetry).
    """
    i, n = 0, len(rec)
    try:
        while i < n:
            tag, i = _varint(rec, i)
            field, wire = tag >> 3, tag & 7
            if field not in _BOOKKEEPING:
                return field
            if wire == 0:
                _, i = _varint(rec, i)
            elif wire == 2:
                length, i = _varint(rec, i)
                i += length
            else:
                return field
    except IndexError:
        return 0
    return 0
