"""A safe byte layout for named NumPy arrays, carried in std_msgs/UInt8MultiArray.

Transitions (actor -> learner) and actor weights (learner -> actors) cross machines as bytes. No
pickle: decoding never runs code, only copies numbers, and every length is checked. Layout
(little-endian)::

    b"SRLW" | u8 version (1) | u32 header length H | H bytes of JSON header | payload

The JSON header is ``{"meta": {...}, "arrays": [{"name", "dtype", "shape", "offset", "nbytes"}]}``
with offsets into the payload (each array 8-byte aligned). ``meta`` holds plain JSON values
(sequence numbers, the policy version, the actor id). Allowed dtypes: bool, (u)int8..64,
float16/32/64. Only NumPy; no ROS import, so it is tested without a ROS graph.
"""

from __future__ import annotations

import json
import struct
from typing import Any, Mapping

import numpy as np

MAGIC = b"SRLW"
VERSION = 1
_PREFIX = struct.Struct("<4sBI")
ALLOWED_DTYPES = ("bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
                  "float16", "float32", "float64")
MAX_HEADER = 1 << 20
MAX_DIMS = 8

__all__ = ["MAGIC", "WireError", "pack", "unpack"]


class WireError(ValueError):
    """Bytes that are not a valid serl_ctrl array message."""


def _align(n: int) -> int:
    return (n + 7) & ~7


def pack(arrays: Mapping[str, Any], meta: Mapping[str, Any] | None = None) -> bytes:
    """Named arrays (+ JSON-able ``meta``) -> bytes. Raises ValueError for unsupported dtypes."""
    entries = []
    blobs = []
    offset = 0
    for name, value in arrays.items():
        a = np.asarray(value)  # (np.ascontiguousarray would turn 0-d scalars into 1-d arrays)
        dtype = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
        if dtype.name not in ALLOWED_DTYPES:
            raise ValueError(f"array {name!r} has dtype {a.dtype}; allowed: {', '.join(ALLOWED_DTYPES)}")
        a = a.astype(dtype.newbyteorder("<"), copy=False)
        data = a.tobytes(order="C")
        entries.append({"name": str(name), "dtype": dtype.name, "shape": list(a.shape), "offset": offset,
                        "nbytes": len(data)})
        blobs.append(data + b"\0" * (_align(len(data)) - len(data)))
        offset += _align(len(data))
    header = json.dumps({"meta": dict(meta or {}), "arrays": entries}, separators=(",", ":")).encode()
    head = _PREFIX.pack(MAGIC, VERSION, len(header)) + header
    head += b"\0" * (_align(len(head)) - len(head))
    return head + b"".join(blobs)


def unpack(data) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """bytes (or any buffer, e.g. a UInt8MultiArray's ``data``) -> (arrays, meta).

    Arrays are copies (writable, independent of the buffer). Raises :class:`WireError` naming
    what is wrong for anything malformed.
    """
    buf = memoryview(data).cast("B") if not isinstance(data, (bytes, bytearray)) else memoryview(data)
    if len(buf) < _PREFIX.size:
        raise WireError(f"message of {len(buf)} bytes is too short for the header")
    magic, version, hlen = _PREFIX.unpack_from(buf, 0)
    if magic != MAGIC:
        raise WireError(f"not a serl_ctrl array message (magic {bytes(magic)!r})")
    if version != VERSION:
        raise WireError(f"array message version {version} is not supported (this reads {VERSION})")
    if hlen > MAX_HEADER or _PREFIX.size + hlen > len(buf):
        raise WireError(f"header length {hlen} does not fit in {len(buf)} bytes")
    try:
        header = json.loads(bytes(buf[_PREFIX.size:_PREFIX.size + hlen]))
        entries, meta = header["arrays"], header["meta"]
    except (ValueError, KeyError, TypeError) as exc:
        raise WireError(f"malformed header: {exc}") from None
    if not isinstance(entries, list) or not isinstance(meta, dict):
        raise WireError("malformed header: 'arrays' must be a list and 'meta' an object")
    base = _align(_PREFIX.size + hlen)
    payload = len(buf) - base
    out: dict[str, np.ndarray] = {}
    for e in entries:
        try:
            name, dtype, shape = str(e["name"]), str(e["dtype"]), [int(n) for n in e["shape"]]
            offset, nbytes = int(e["offset"]), int(e["nbytes"])
        except (KeyError, TypeError, ValueError) as exc:
            raise WireError(f"malformed array entry {e!r}: {exc}") from None
        if dtype not in ALLOWED_DTYPES:
            raise WireError(f"array {name!r}: dtype {dtype!r} is not allowed")
        if len(shape) > MAX_DIMS or any(n < 0 for n in shape):
            raise WireError(f"array {name!r}: bad shape {shape}")
        dt = np.dtype(dtype).newbyteorder("<")
        if int(np.prod(shape, dtype=np.int64)) * dt.itemsize != nbytes:
            raise WireError(f"array {name!r}: {nbytes} bytes do not hold {shape} of {dtype}")
        if offset < 0 or offset + nbytes > payload:
            raise WireError(f"array {name!r}: bytes {offset}..{offset + nbytes} lie outside the payload")
        if name in out:
            raise WireError(f"array {name!r} appears twice")
        out[name] = np.frombuffer(buf, dtype=dt, count=nbytes // dt.itemsize if dt.itemsize else 0,
                                  offset=base + offset).reshape(tuple(shape)).astype(dt.newbyteorder("="), copy=True)
    return out, meta
