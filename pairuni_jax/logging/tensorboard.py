"""TensorBoard event files written without TensorFlow, TensorBoard or protobuf.

An event file is a sequence of TFRecords, each

    uint64 length | uint32 masked_crc32c(length) | payload | uint32 masked_crc32c(payload)

(little-endian), whose payloads are serialized ``tensorboard.Event`` protobufs. Only the few
fields used here are encoded, by hand (field numbers from tensorboard/compat/proto/event.proto
and summary.proto):

    Event:          wall_time 1 (double), step 2 (int64), file_version 3 (string),
                    summary 5 (Summary), session_log 7 (SessionLog)
    SessionLog:     status 1 (enum, START = 1)
    Summary:        value 1 (repeated Value)
    Summary.Value:  tag 1 (string), simple_value 2 (float), image 4 (Image)
    Summary.Image:  height 1, width 2, colorspace 3 (int32), encoded_image_string 4 (bytes)
"""

from __future__ import annotations

import io
import itertools
import os
import socket
import struct
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1  # reflected Castagnoli
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data``, one table lookup per byte (about 10 MB/s)."""
    crc = 0xFFFFFFFF
    table = _CRC32C_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """The TFRecord checksum: CRC-32C rotated right by 15 bits plus a constant, mod 2**32."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(payload: bytes) -> bytes:
    """One framed TFRecord holding ``payload``."""
    length = struct.pack("<Q", len(payload))
    return (
        length
        + struct.pack("<I", masked_crc32c(length))
        + payload
        + struct.pack("<I", masked_crc32c(payload))
    )


def _varint(value: int) -> bytes:
    value &= 0xFFFFFFFFFFFFFFFF  # negative int64 as ten bytes of two's complement
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _varint_field(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value)


def _bytes_field(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _double_field(field: int, value: float) -> bytes:
    return _varint(field << 3 | 1) + struct.pack("<d", value)


def _float_field(field: int, value: float) -> bytes:
    return _varint(field << 3 | 5) + struct.pack("<f", value)


def _event(step: int, **fields: bytes) -> bytes:
    """An Event with the wall time now, ``step`` and already-encoded extra fields."""
    return _double_field(1, time.time()) + _varint_field(2, step) + b"".join(fields.values())


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, "PNG")
    return buffer.getvalue()


_writer_ids = itertools.count()


class EventWriter:
    """Appends scalar and image summaries to a new event file in ``logdir``.

    The file is ``events.out.tfevents.<unix time>.<host>.<pid>.<n>`` (``n`` counts the writers
    of this process), so writers never overwrite each other. ``purge_step`` (for a resumed run:
    the first step it will log) writes a SessionLog START event at that step, on which
    TensorBoard's loader discards the points at steps >= ``purge_step`` read from earlier files
    of the directory, i.e. those logged by the interrupted run after its last checkpoint.
    """

    def __init__(self, logdir: str | os.PathLike, *, purge_step: int | None = None):
        directory = Path(logdir)
        directory.mkdir(parents=True, exist_ok=True)
        name = (
            f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}."
            f"{os.getpid()}.{next(_writer_ids)}"
        )
        self.path = directory / name
        self._file = open(self.path, "xb")
        self._write(_event(0, file_version=_bytes_field(3, b"brain.Event:2")))
        if purge_step is not None:
            self._write(_event(purge_step, session_log=_bytes_field(7, _varint_field(1, 1))))
        self.flush()

    def _write(self, event: bytes) -> None:
        self._file.write(tfrecord(event))

    def _summary(self, step: int, values: list[bytes]) -> None:
        summary = b"".join(_bytes_field(1, value) for value in values)
        self._write(_event(step, summary=_bytes_field(5, summary)))

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """One event holding a float32 ``simple_value`` per tag."""
        self._summary(
            step,
            [
                _bytes_field(1, tag.encode()) + _float_field(2, float(value))
                for tag, value in values.items()
            ],
        )

    def image(self, step: int, tag: str, image: np.ndarray) -> None:
        """One PNG image; ``image``: uint8[H, W, C], C = 1 (grey), 3 (RGB) or 4 (RGBA)."""
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
            raise ValueError(
                f"image {tag!r}: expected uint8[H, W, 1|3|4], got {image.dtype}{list(image.shape)}"
            )
        height, width, channels = image.shape
        encoded = (
            _varint_field(1, height)
            + _varint_field(2, width)
            + _varint_field(3, channels)
            + _bytes_field(4, _png(image))
        )
        self._summary(step, [_bytes_field(1, tag.encode()) + _bytes_field(4, encoded)])

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
