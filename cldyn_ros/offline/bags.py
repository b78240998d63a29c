"""Reading and writing rosbag2 bags of camera images with ``rosbags`` (no ROS runtime).

Both storage formats (``sqlite3`` .db3 and ``mcap``) and the message definitions of the
Humble, Jazzy and Kilted distros are supported. The CDR bytes ``rosbags`` writes are the ones
``rclpy.serialization.serialize_message`` produces, so the bags play with ``ros2 bag play`` on
a robot and their messages deserialise with rclpy.

Everything that can go wrong with a bag (not a bag, unreadable metadata, truncated or corrupt
data, a missing topic, a topic of the wrong message type, an undecodable image) raises
:class:`BagError` with a one-line reason; no other exception escapes from here for bad input.
A damaged bag (no metadata.yaml, an MCAP file without footer or with a corrupt chunk, a
``.db3`` cut short or with unreadable pages) is read message by message past the damage,
so every intact message is still read; the error at the end says what was damaged.
:class:`ImageBagWriter` writes all or nothing: a bag appears under its name only complete.

Stream generation (:func:`synthetic_stream`, :func:`folder_stream`) gives realistic stamps:
two free-running cameras (colour and thermal rates differ), Gaussian stamp jitter, a small
transport delay between the header stamp and the time the message was logged, and optional
gaps (a camera dropping out).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import os
import shutil
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..streams.camera_info import CameraInfoData
from ..streams.compressed import COMPRESSED_TYPE, encode_compressed
from ..streams.image_convert import message_array
from ..streams.image_msgs import ImageMessageError, numpy_to_image, stamp_to_ns

__all__ = [
    "CAMERA_INFO_TYPE",
    "COMPRESSED_TYPE",
    "DISTROS",
    "IMAGE_TYPE",
    "IMAGE_TYPES",
    "STORAGES",
    "BagError",
    "BagInfo",
    "ImageBagWriter",
    "ImageRecord",
    "StreamFrame",
    "bag_info",
    "camera_info_message",
    "decode_camera_info",
    "decode_stamp",
    "folder_stream",
    "image_message",
    "iter_messages",
    "read_images",
    "stream_stamps",
    "synthetic_stream",
    "typestore_for",
    "write_stream",
]

IMAGE_TYPE = "sensor_msgs/msg/Image"
#: Message types the image tools read: raw and compressed images.
IMAGE_TYPES = (IMAGE_TYPE, COMPRESSED_TYPE)
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
STORAGES = ("mcap", "sqlite3")
#: Distros whose message definitions the writer can use, and the metadata version written.
DISTROS = {"humble": 8, "jazzy": 8, "kilted": 9}
_NS = 1_000_000_000
log = logging.getLogger(__name__)
#: Default start of generated streams: 2024-01-01T00:00:00Z (a plausible sensor clock).
DEFAULT_START_NS = 1_704_067_200 * _NS


class BagError(ValueError):
    """A bag that cannot be read or written as asked; the message says why."""


def typestore_for(distro: str = "kilted") -> Any:
    """The ``rosbags`` type store of a ROS 2 distro (``humble``, ``jazzy``, ``kilted``)."""
    from rosbags.typesys import Stores, get_typestore

    stores = {"humble": Stores.ROS2_HUMBLE, "jazzy": Stores.ROS2_JAZZY,
              "kilted": Stores.ROS2_KILTED}
    if distro not in stores:
        raise BagError(f"unknown ROS distro '{distro}'; choose from {sorted(stores)}")
    return get_typestore(stores[distro])


# ------------------------------------------------------------------------------- reading
@dataclass
class BagInfo:
    """What a bag holds: ``topics`` maps each topic to ``(message type, message count)``."""

    path: Path
    storage: str
    distro: str
    topics: dict[str, tuple[str, int]]
    start_ns: int
    end_ns: int
    message_count: int
    damaged: str | None = None  # set when the bag was salvaged record by record

    @property
    def duration_s(self) -> float:
        return max(0, self.end_ns - self.start_ns) / _NS

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path), "storage": self.storage, "distro": self.distro,
            "start_ns": self.start_ns, "end_ns": self.end_ns,
            "duration_s": round(self.duration_s, 6), "message_count": self.message_count,
            "damaged": self.damaged,
            "topics": {t: {"type": m, "count": c} for t, (m, c) in self.topics.items()},
        }


def _open_reader(path: str | Path) -> Any:
    """An open ``rosbags`` Reader; every failure becomes a :class:`BagError`."""
    from rosbags.rosbag2 import Reader

    path = Path(path)
    if not path.exists():
        raise BagError(f"bag '{path}' does not exist")
    if path.is_file():
        raise BagError(f"'{path}' is a file: give the bag folder (with metadata.yaml)")
    if not (path / "metadata.yaml").is_file():
        raise BagError(f"'{path}' is not a rosbag2 bag: no metadata.yaml in it")
    reader = Reader(path)
    try:
        reader.open()
    except Exception as e:  # ReaderError, sqlite3/mcap/yaml errors on damaged files
        raise BagError(f"cannot open bag '{path}': {_reason(e)} (a truncated or corrupt "
                       "file? an interrupted recording can often be repaired with "
                       "'mcap recover' or 'ros2 bag reindex')") from None
    return reader


def _reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _storage_of(path: Path) -> str:
    files = [p.suffix for p in Path(path).iterdir()]
    if ".mcap" in files:
        return "mcap"
    if ".db3" in files:
        return "sqlite3"
    return "?"


# ------------------------------------------------------------------ damaged MCAP salvage
_MCAP_MAGIC = b"\x89MCAP0\r\n"
_OP_SCHEMA, _OP_CHANNEL, _OP_MESSAGE, _OP_CHUNK, _OP_FOOTER = 0x03, 0x04, 0x05, 0x06, 0x02


def _mcap_string(buf: Any, pos: int) -> tuple[str, int]:
    (n,) = struct.unpack_from("<I", buf, pos)
    return bytes(buf[pos + 4:pos + 4 + n]).decode("utf-8", "replace"), pos + 4 + n


class _McapSalvage:
    """Read the complete records of an MCAP file front to back, without its summary.

    An interrupted recording (power loss, killed recorder) leaves an MCAP file without its
    footer, which the regular reader refuses. The records before the damage are intact:
    schemas, channels and messages, top-level or inside chunks (any compression; the
    complete records of a cut-off uncompressed chunk too).
    """

    storage = "mcap"

    def __init__(self, file: Path) -> None:
        self.file = file
        self.schemas: dict[int, str] = {}
        self.channels: dict[int, tuple[str, str]] = {}
        self.damage: str | None = None
        self.complete = False

    @property
    def intact(self) -> bool:
        """The whole file was read and nothing was damaged."""
        return self.complete and self.damage is None

    def messages(self, with_data: bool = True) -> Iterator[tuple[str, str, int, bytes]]:
        with open(self.file, "rb") as fh:
            data = fh.read()
        if not data.startswith(_MCAP_MAGIC):
            raise BagError(f"'{self.file}' is not an MCAP file (bad magic bytes)")
        yield from self._records(memoryview(data), len(_MCAP_MAGIC), len(data), top=True)

    def _records(self, buf: memoryview, pos: int, end: int,
                 top: bool) -> Iterator[tuple[str, str, int, bytes]]:
        while pos < end:
            if pos + 9 > end:
                self._damaged(top, f"a record header is cut off at byte {pos}")
                return
            op = buf[pos]
            (length,) = struct.unpack_from("<Q", buf, pos + 1)
            body_start, body_end = pos + 9, pos + 9 + length
            if body_end > end:
                if top and op == _OP_CHUNK:
                    yield from self._partial_chunk(buf, body_start, end)
                self._damaged(top, f"a record (opcode 0x{op:02x}) is cut off at byte {pos}")
                return
            try:
                if op == _OP_SCHEMA:
                    (sid,) = struct.unpack_from("<H", buf, body_start)
                    self.schemas[sid], _ = _mcap_string(buf, body_start + 2)
                elif op == _OP_CHANNEL:
                    cid, sid = struct.unpack_from("<HH", buf, body_start)
                    topic, _ = _mcap_string(buf, body_start + 4)
                    self.channels[cid] = (topic, self.schemas.get(sid, "?"))
                elif op == _OP_MESSAGE:
                    cid, _, log_ns, _ = struct.unpack_from("<HIQQ", buf, body_start)
                    if cid in self.channels:
                        topic, msgtype = self.channels[cid]
                        yield topic, msgtype, int(log_ns), bytes(buf[body_start + 22:body_end])
                elif op == _OP_CHUNK and top:
                    try:
                        yield from self._chunk(buf, body_start, body_end)
                    except (struct.error, BagError, ValueError) as e:
                        # The chunk's length is intact: skip it, read on after it.
                        self._damaged(top, f"chunk at byte {pos} is corrupt ({_reason(e)})")
                elif op == _OP_FOOTER and top:
                    self.complete = True
                    return
            except (struct.error, BagError, ValueError) as e:
                self._damaged(top, f"record at byte {pos} is corrupt ({_reason(e)})")
                return
            pos = body_end
        if top and not self.complete and self.damage is None:
            self.damage = "the file ends without its footer"

    def _chunk_header(self, buf: memoryview, pos: int) -> tuple[str, int, int, int, int]:
        _, _, size, crc = struct.unpack_from("<QQQI", buf, pos)
        compression, pos = _mcap_string(buf, pos + 28)
        (n,) = struct.unpack_from("<Q", buf, pos)
        return compression, size, crc, pos + 8, n

    def _chunk(self, buf: memoryview, start: int, end: int) -> Iterator[tuple]:
        from rosbags.rosbag2.storage_mcap import decompress

        compression, size, crc, pos, n = self._chunk_header(buf, start)
        try:  # the checksum (where written) tells a damaged chunk from an intact one
            raw = decompress(bytes(buf[pos:pos + n]), compression, size, crc)
        except Exception as e:
            raise BagError(f"chunk cannot be decompressed: {_reason(e)}") from None
        inner = memoryview(raw)
        yield from self._records(inner, 0, len(inner), top=False)

    def _partial_chunk(self, buf: memoryview, start: int, end: int) -> Iterator[tuple]:
        try:
            compression, _, _, pos, _ = self._chunk_header(buf, start)
        except struct.error:
            return
        if compression == "":  # the complete records of the cut-off chunk are readable
            yield from self._records(buf, pos, end, top=False)

    def _damaged(self, top: bool, reason: str) -> None:
        if self.damage is None:
            self.damage = reason if top else f"inside a chunk, {reason}"
        elif not self.damage.endswith("and more"):
            self.damage += " and more"


# --------------------------------------------------------------- damaged sqlite3 salvage
_SQLITE_MAGIC = b"SQLite format 3\x00"
#: Consecutive unreadable message ids probed one by one before the probe gallops.
_SQLITE_LINEAR_PROBES = 256


class _Sqlite3Salvage:
    """Read every readable message of a rosbag2 ``.db3`` file, without metadata.yaml.

    A killed recorder leaves no metadata.yaml; a copy cut short or a bad disk sector leaves
    pages that SQLite reports as malformed. Messages are read by row id, each row on its
    own, so unreadable pages cost only the rows on them. A file shorter than its header
    says is read from a temporary copy padded with zero pages (SQLite refuses the whole
    file otherwise). Messages come in recording (row) order.
    """

    storage = "sqlite3"

    def __init__(self, file: Path) -> None:
        self.file = file
        self.channels: dict[int, tuple[str, str]] = {}
        self.damage: str | None = None
        self.complete = False
        self.skipped = 0
        self._problems: list[str] = []

    @property
    def intact(self) -> bool:
        return self.complete and self.damage is None

    def messages(self, with_data: bool = True) -> Iterator[tuple[str, str, int, bytes]]:
        import sqlite3
        import tempfile

        with open(self.file, "rb") as fh:
            header = fh.read(100)
        if not header.startswith(_SQLITE_MAGIC):
            raise BagError(f"'{self.file}' is not an SQLite database (bad magic bytes)")
        page_size = int.from_bytes(header[16:18], "big") or 65536
        if page_size == 1:
            page_size = 65536
        pages = int.from_bytes(header[28:32], "big")
        size = self.file.stat().st_size
        with tempfile.TemporaryDirectory(prefix="cldyn-salvage-") as tmp:
            file = self.file
            if pages * page_size > size:
                self._damaged(f"the file is cut off at byte {size} of "
                              f"{pages * page_size}")
                file = Path(tmp) / "padded.db3"
                with open(self.file, "rb") as src, open(file, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                    dst.truncate(pages * page_size)  # zero pages: unreadable, not fatal
            try:
                con = sqlite3.connect(f"file:{file}?mode=ro&immutable=1", uri=True)
            except sqlite3.Error as e:
                raise BagError(f"'{self.file}' cannot be opened ({_reason(e)})") from None
            try:
                yield from self._rows(con, with_data)
            finally:
                con.close()

    def _rows(self, con: Any, with_data: bool) -> Iterator[tuple[str, str, int, bytes]]:
        import sqlite3

        try:
            self.channels = {int(i): (str(n), str(t)) for i, n, t in
                             con.execute("SELECT id, name, type FROM topics")}
        except sqlite3.Error as e:
            self._damaged(f"its topics table is unreadable ({_reason(e)})")
            return
        try:
            (top,) = con.execute("SELECT max(id) FROM messages").fetchone()
        except sqlite3.Error:
            top = None  # the last page is damaged: probe up to the failure limit
        columns = "id, topic_id, timestamp" + (", data" if with_data else "")
        query = f"SELECT {columns} FROM messages WHERE id > ? ORDER BY id LIMIT 1"
        last, failures, first_bad = 0, 0, None
        while top is None or last < top:
            probe = last + (failures + 1 if failures < _SQLITE_LINEAR_PROBES
                            else 2 ** min(failures - _SQLITE_LINEAR_PROBES + 8, 40))
            try:
                row = con.execute(query, (probe - 1,)).fetchone()
            except sqlite3.Error as e:
                if first_bad is None:
                    first_bad = (probe, _reason(e))
                failures += 1
                if failures > _SQLITE_LINEAR_PROBES + 32 or (top is not None and probe >= top):
                    break
                continue
            if first_bad is not None:
                self._unreadable(first_bad, row)
                first_bad = None
            if row is None:
                self.complete = True
                return
            failures = 0
            last = int(row[0])
            channel = self.channels.get(row[1]) if isinstance(row[1], int) else None
            if (channel is None or not isinstance(row[2], int)
                    or (with_data and not isinstance(row[3], bytes))):
                self.skipped += 1  # a cell that reads but holds garbage
                self._damaged(f"message row {last} is corrupt")
                continue
            yield channel[0], channel[1], row[2], bytes(row[3]) if with_data else b""
        if first_bad is not None:
            self._unreadable(first_bad, None)
        else:
            self.complete = True

    def _unreadable(self, first_bad: tuple[int, str], row: Any) -> None:
        start, reason = first_bad
        end = f"{int(row[0]) - 1}" if row is not None else "the end"
        self._damaged(f"messages from row {start} to {end} are unreadable ({reason})")

    def _damaged(self, reason: str) -> None:
        self._problems.append(reason)
        self.damage = "; ".join(self._problems[:2]) + (
            f" and {len(self._problems) - 2} more" if len(self._problems) > 2 else "")


def _salvage_for(path: Path) -> _McapSalvage | _Sqlite3Salvage | None:
    """A salvage reader for the bag at ``path`` (a bag folder with one ``.mcap`` or ``.db3``
    file, or such a file itself), or ``None``."""
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".mcap", ".db3"))
    else:
        return None
    if len(files) != 1:
        return None
    if files[0].suffix == ".mcap":
        return _McapSalvage(files[0])
    if files[0].suffix == ".db3":
        return _Sqlite3Salvage(files[0])
    return None


def _salvage_info(path: Path, salvage: _McapSalvage | _Sqlite3Salvage,
                  why: str | None) -> BagInfo:
    counts: dict[str, tuple[str, int]] = {}
    start = end = n = 0
    for topic, msgtype, log_ns, _ in salvage.messages(with_data=False):
        _, c = counts.get(topic, (msgtype, 0))
        counts[topic] = (msgtype, c + 1)
        start = log_ns if n == 0 else min(start, log_ns)
        end = max(end, log_ns)
        n += 1
    for topic, msgtype in salvage.channels.values():
        counts.setdefault(topic, (msgtype, 0))
    problem = salvage.damage or ("" if salvage.complete else "no footer")
    damage = None if salvage.intact and why is None else (
        f"{why + '; ' if why else ''}salvaged {n} complete message(s) from "
        f"{salvage.file.name}" + (f" ({problem})" if problem else ""))
    return BagInfo(path, salvage.storage, "", counts, start, end, n, damage)


def bag_info(path: str | Path) -> BagInfo:
    """Topics, types, counts and time span of a bag (from its metadata).

    A bag the regular reader refuses (no metadata.yaml: an interrupted recording; an MCAP
    file without its footer; a truncated or corrupt ``.db3``) or a bare ``.mcap`` / ``.db3``
    file is scanned message by message instead; ``damaged`` then says what was salvaged.
    """
    path = Path(path)
    try:
        reader = _open_reader(path)
    except BagError as e:
        salvage = _salvage_for(path)
        if salvage is None:
            raise
        why = None if path.is_file() else str(e).split(" (a truncated")[0]
        return _salvage_info(path, salvage, why)
    try:
        counts: dict[str, tuple[str, int]] = {}
        for conn in reader.connections:
            _, n = counts.get(conn.topic, (conn.msgtype, 0))
            counts[conn.topic] = (conn.msgtype, n + int(conn.msgcount))
        distro = str(getattr(reader, "ros_distro", "") or "")
        start = int(reader.start_time) if reader.message_count else 0
        end = int(reader.end_time) if reader.message_count else 0
        return BagInfo(Path(path), _storage_of(Path(path)), distro, counts, start, end,
                       int(reader.message_count))
    except BagError:
        raise
    except Exception as e:
        raise BagError(f"cannot read the metadata of bag '{path}': {_reason(e)}") from None
    finally:
        reader.close()


def check_image_topics(info: BagInfo, topics: Sequence[str]) -> None:
    """Raise :class:`BagError` unless every topic exists, is ``sensor_msgs/msg/Image`` or
    ``sensor_msgs/msg/CompressedImage`` and holds messages; the message lists the image
    topics the bag does have."""
    images = sorted(t for t, (m, _) in info.topics.items() if m in IMAGE_TYPES)
    have = f"image topics in the bag: {', '.join(images) if images else 'none'}"
    if info.damaged:
        have += f"; the bag is damaged: {info.damaged}"
    for topic in topics:
        if topic not in info.topics:
            raise BagError(f"topic '{topic}' is not in bag '{info.path}' ({have})")
        msgtype, count = info.topics[topic]
        if msgtype not in IMAGE_TYPES:
            raise BagError(f"topic '{topic}' has message type '{msgtype}', not {IMAGE_TYPE} "
                           f"or {COMPRESSED_TYPE} ({have})")
        if count == 0:
            raise BagError(f"topic '{topic}' has no messages in bag '{info.path}'")


def iter_messages(
    path: str | Path, topics: Sequence[str] | None = None,
) -> Iterator[tuple[str, str, int, bytes]]:
    """``(topic, msgtype, log time ns, raw CDR bytes)`` in log-time order.

    ``topics`` None reads every topic. A damaged bag (no metadata.yaml, truncated or
    corrupt pages or chunks) is read message by message instead (in recording order), and
    where the regular reader fails part-way the salvage reads on past the damage, so every
    intact message is yielded once; then :class:`BagError` says what was damaged.
    """
    path = Path(path)
    try:
        reader = _open_reader(path)
    except BagError:
        salvage = _salvage_for(path)
        if salvage is None:
            raise
        yield from _salvaged_messages(path, salvage, topics)
        return
    seen: collections.Counter[tuple[str, int, int]] = collections.Counter()
    failure = None
    try:
        conns = [c for c in reader.connections if topics is None or c.topic in topics]
        it = reader.messages(connections=conns) if conns else iter(())
        while True:
            try:
                conn, log_ns, raw = next(it)
            except StopIteration:
                break
            except Exception as e:
                failure = _reason(e)
                break
            raw = bytes(raw)
            seen[(conn.topic, int(log_ns), len(raw))] += 1
            yield conn.topic, conn.msgtype, int(log_ns), raw
    finally:
        reader.close()
    if failure is None:
        return
    count = sum(seen.values())
    salvage = _salvage_for(path)
    if salvage is None:
        raise BagError(f"bag '{path}' is truncated or corrupt: reading failed after "
                       f"{count} message(s) ({failure})")
    # Read on past the damage; the messages already yielded are skipped.
    for item in _salvaged_messages(path, salvage, topics, failure, count):
        key = (item[0], item[2], len(item[3]))
        if seen[key]:
            seen[key] -= 1
            continue
        yield item


def _salvaged_messages(path: Path, salvage: _McapSalvage | _Sqlite3Salvage,
                       topics: Sequence[str] | None, failure: str | None = None,
                       before: int = 0) -> Iterator[tuple[str, str, int, bytes]]:
    count = 0
    for item in salvage.messages():
        if topics is None or item[0] in topics:
            count += 1
            yield item
    if not salvage.intact or failure is not None:
        damage = salvage.damage or failure or "the file ends without its footer"
        raise BagError(f"bag '{path}' is truncated or corrupt: read {max(count, before)} "
                       f"intact message(s); {damage}")


@dataclass
class ImageRecord:
    """One image message of a bag, decoded.

    ``image`` is in ``encoding``'s layout (``H x W`` mono, ``H x W x 3`` in the message's
    channel order, ...; see :func:`~cldyn_ros.streams.image_msgs.image_to_numpy`); for a
    CompressedImage the decoded pixels and the encoding its ``format`` names. Turn it into a
    fusion input with :mod:`cldyn_ros.streams.image_convert`. ``raw`` is the message's CDR
    bytes, ``msgtype`` its type.
    """

    topic: str
    log_ns: int
    stamp_ns: int
    frame_id: str
    encoding: str
    image: np.ndarray
    raw: bytes = b""
    msgtype: str = IMAGE_TYPE


def _deserialize(raw: bytes, typestore: Any, msgtype: str, topic: str, log_ns: int) -> Any:
    try:
        return typestore.deserialize_cdr(raw, msgtype)
    except Exception as e:
        raise BagError(f"message on '{topic}' at {log_ns} ns is not a valid {msgtype} "
                       f"({_reason(e)})") from None


def decode_image(raw: bytes, typestore: Any, topic: str = "", log_ns: int = 0,
                 msgtype: str = IMAGE_TYPE) -> ImageRecord:
    """Deserialise one ``sensor_msgs/msg/Image`` or ``CompressedImage`` and view (decode) its
    pixels (:class:`BagError` if it cannot be decoded or has an unsupported encoding)."""
    if msgtype not in IMAGE_TYPES:
        raise BagError(f"'{topic}' has message type '{msgtype}', not an image")
    msg = _deserialize(raw, typestore, msgtype, topic, log_ns)
    try:
        image, encoding = message_array(msg)
    except ImageMessageError as e:
        raise BagError(f"image on '{topic}' at {log_ns} ns cannot be used: {e}") from None
    return ImageRecord(topic, log_ns, stamp_to_ns(msg.header.stamp), msg.header.frame_id,
                       encoding, image, raw, msgtype)


def decode_stamp(raw: bytes, typestore: Any, msgtype: str, topic: str = "",
                 log_ns: int = 0) -> tuple[int, str]:
    """``(header stamp ns, frame_id)`` of a message with a header, without decoding pixels."""
    msg = _deserialize(raw, typestore, msgtype, topic, log_ns)
    return stamp_to_ns(msg.header.stamp), str(msg.header.frame_id)


def decode_camera_info(raw: bytes, typestore: Any, topic: str = "",
                       log_ns: int = 0) -> tuple[int, str, CameraInfoData]:
    """``(stamp ns, frame_id, content)`` of one ``sensor_msgs/msg/CameraInfo``."""
    msg = _deserialize(raw, typestore, CAMERA_INFO_TYPE, topic, log_ns)
    try:
        info = CameraInfoData.from_message(msg)
    except ValueError as e:
        raise BagError(f"camera_info on '{topic}' at {log_ns} ns cannot be used: {e}") from None
    return stamp_to_ns(msg.header.stamp), str(msg.header.frame_id), info


def read_images(path: str | Path, topics: Sequence[str]) -> Iterator[ImageRecord]:
    """Decode the image messages of ``topics`` in log-time order (checks the topics first)."""
    info = bag_info(path)
    check_image_topics(info, topics)
    store = typestore_for("kilted")  # the sensor_msgs types are the same in every ROS 2 distro
    for topic, msgtype, log_ns, raw in iter_messages(path, topics):
        yield decode_image(raw, store, topic, log_ns, msgtype)


# ------------------------------------------------------------------------------- writing
def _header(typestore: Any, stamp_ns: int, frame_id: str) -> Any:
    Header = typestore.types["std_msgs/msg/Header"]
    Time = typestore.types["builtin_interfaces/msg/Time"]
    sec, nanosec = divmod(int(stamp_ns), _NS)
    return Header(stamp=Time(sec=sec, nanosec=nanosec), frame_id=frame_id)


def image_message(typestore: Any, image: np.ndarray, encoding: str, stamp_ns: int,
                  frame_id: str = "", codec: str | None = None) -> Any:
    """A ``rosbags`` ``sensor_msgs/msg/Image`` with these pixels and header, or with
    ``codec`` (``jpeg``/``png``) a ``sensor_msgs/msg/CompressedImage`` as image_transport's
    compressed publisher writes it."""
    header = _header(typestore, stamp_ns, frame_id)
    try:
        if codec is not None:
            fmt, data = encode_compressed(image, encoding, codec)
            return typestore.types[COMPRESSED_TYPE](header=header, format=fmt,
                                                    data=np.frombuffer(data, np.uint8))
        msg = typestore.types[IMAGE_TYPE](header=header, height=0, width=0, encoding="",
                                          is_bigendian=0, step=0, data=np.zeros(0, np.uint8))
        return numpy_to_image(image, encoding, msg)
    except ImageMessageError as e:
        raise BagError(str(e)) from None


def camera_info_message(typestore: Any, info: CameraInfoData, stamp_ns: int,
                        frame_id: str = "") -> Any:
    """A ``rosbags`` ``sensor_msgs/msg/CameraInfo`` with this content and header."""
    roi = typestore.types["sensor_msgs/msg/RegionOfInterest"](
        x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    msg = typestore.types[CAMERA_INFO_TYPE](
        header=_header(typestore, stamp_ns, frame_id), height=0, width=0,
        distortion_model="", d=np.zeros(0), k=np.zeros(9), r=np.zeros(9), p=np.zeros(12),
        binning_x=0, binning_y=0, roi=roi)
    return info.fill(msg)


class ImageBagWriter:
    """Write a rosbag2 bag (context manager), all or nothing.

    The bag is written into a hidden staging folder next to ``path``
    (``.<name>.partial-*``) and moved to ``path`` only when it is complete (:meth:`close`);
    an exception or Ctrl-C inside the ``with`` block (or :meth:`abort`) removes the staging
    folder and logs that the bag was not written, so ``path`` never holds a half-written
    bag. (A process killed outright can leave the hidden staging folder, never ``path``.)

    Args:
        path: the bag folder to create (must not exist unless ``overwrite``).
        storage: ``mcap`` or ``sqlite3``.
        distro: ``humble``, ``jazzy`` or ``kilted``: message definitions and metadata version.
        overwrite: replace an existing bag folder at ``path`` (when the new one is complete).
    """

    def __init__(self, path: str | Path, storage: str = "mcap", distro: str = "kilted",
                 overwrite: bool = False) -> None:
        import tempfile

        from rosbags.rosbag2 import StoragePlugin, Writer

        if storage not in STORAGES:
            raise BagError(f"unknown storage '{storage}'; choose from {list(STORAGES)}")
        self.path = Path(path)
        if self.path.exists():
            if not overwrite:
                raise BagError(f"'{self.path}' already exists (rosbag2 writes a new folder)")
            if not (self.path / "metadata.yaml").exists() and any(self.path.iterdir()):
                raise BagError(f"refusing to overwrite '{self.path}': not a bag folder")
        self.typestore = typestore_for(distro)
        self.distro = distro
        self.storage = storage
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._staging = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.partial-",
                                                  dir=self.path.parent))
        except OSError as e:
            raise BagError(f"cannot create bag '{self.path}': {_reason(e)}") from None
        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        # The bag folder inside the staging folder has the final name (rosbag2 names the
        # storage file after its folder), so moving it changes nothing inside.
        self._writer = Writer(self._staging / self.path.name,
                              version=DISTROS[distro],  # type: ignore[arg-type]
                              storage_plugin=plugin)  # (8 or 9, per distro)
        self._conns: dict[str, Any] = {}
        self.counts: dict[str, int] = {}
        self._opened = False
        self._finished = False

    def __enter__(self) -> ImageBagWriter:
        try:
            self._writer.open()
        except Exception as e:
            self.abort()
            raise BagError(f"cannot create bag '{self.path}': {_reason(e)}") from None
        self._opened = True
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def close(self) -> None:
        """Finish the bag and move it to ``path`` (replacing an old bag there)."""
        if self._finished:
            return
        try:
            self._writer.close()
            staged, replaced = self._staging / self.path.name, None
            if self.path.exists():
                replaced = self._staging / "replaced"
                os.replace(self.path, replaced)
            try:
                os.replace(staged, self.path)
            except BaseException:
                if replaced is not None:  # put the old bag back
                    os.replace(replaced, self.path)
                raise
        except BaseException:
            self.abort()
            raise
        self._finished = True
        shutil.rmtree(self._staging, ignore_errors=True)

    def abort(self) -> None:
        """Discard the bag being written (``path`` is left as it was). Idempotent."""
        if self._finished:
            return
        self._finished = True
        if self._opened:
            with contextlib.suppress(Exception):
                self._writer.abort()
        shutil.rmtree(self._staging, ignore_errors=True)
        log.warning("bag '%s' was not written: stopped before it was complete (the partial "
                    "bag was removed)", self.path)

    def add_topic(self, topic: str, msgtype: str = IMAGE_TYPE) -> Any:
        """Declare a topic (once; later calls return the same connection)."""
        if topic not in self._conns:
            if msgtype not in self.typestore.types:
                raise BagError(f"message type '{msgtype}' is unknown to the {self.distro} "
                               "type store")
            self._conns[topic] = self._writer.add_connection(topic, msgtype,
                                                             typestore=self.typestore)
            self.counts[topic] = 0
        return self._conns[topic]

    def write_raw(self, topic: str, log_ns: int, raw: bytes | memoryview,
                  msgtype: str = IMAGE_TYPE) -> None:
        """Write serialised (CDR) bytes on ``topic`` at log time ``log_ns``."""
        conn = self.add_topic(topic, msgtype)
        self._writer.write(conn, int(log_ns), raw)
        self.counts[topic] += 1

    def write_image(self, topic: str, image: np.ndarray, encoding: str, stamp_ns: int,
                    frame_id: str = "", log_ns: int | None = None,
                    codec: str | None = None) -> bytes:
        """Write one image (header stamp ``stamp_ns``; logged at ``log_ns`` or the stamp);
        with ``codec`` (``jpeg``/``png``) as a CompressedImage. Returns its CDR bytes."""
        msgtype = IMAGE_TYPE if codec is None else COMPRESSED_TYPE
        msg = image_message(self.typestore, image, encoding, stamp_ns, frame_id, codec)
        raw = bytes(self.typestore.serialize_cdr(msg, msgtype))
        self.write_raw(topic, stamp_ns if log_ns is None else log_ns, raw, msgtype)
        return raw

    def write_camera_info(self, topic: str, info: CameraInfoData, stamp_ns: int,
                          frame_id: str = "", log_ns: int | None = None) -> bytes:
        """Write one CameraInfo (as :meth:`write_image`); returns its CDR bytes."""
        msg = camera_info_message(self.typestore, info, stamp_ns, frame_id)
        raw = bytes(self.typestore.serialize_cdr(msg, CAMERA_INFO_TYPE))
        self.write_raw(topic, stamp_ns if log_ns is None else log_ns, raw, CAMERA_INFO_TYPE)
        return raw


# ----------------------------------------------------------------------- stream generation
@dataclass(frozen=True)
class StreamFrame:
    """One generated camera frame: which stream, header stamp, log time, scene time."""

    stream: str  # "thermal" or "rgb"
    stamp_ns: int
    log_ns: int
    t: float  # scene time in seconds since the start (what the image shows)


def stream_stamps(
    duration_s: float,
    rate_hz: float,
    stream: str,
    jitter_ms: float = 0.0,
    latency_ms: float = 3.0,
    start_ns: int = DEFAULT_START_NS,
    offset_s: float = 0.0,
    gaps: Iterable[tuple[float, float]] = (),
    rng: np.random.Generator | None = None,
) -> list[StreamFrame]:
    """Frames of one free-running camera over ``[0, duration_s)``.

    Frame ``i`` is exposed at ``offset_s + i / rate_hz``; its header stamp adds Gaussian jitter
    of ``jitter_ms`` standard deviation (stamps stay strictly increasing); it is logged
    ``latency_ms`` (plus a little random transport delay) later. Frames whose nominal time
    falls into a gap ``(t0, t1)`` (seconds, half-open) are left out.
    """
    if not (math.isfinite(rate_hz) and rate_hz > 0):
        raise ValueError(f"{stream} rate must be a positive number of Hz, got {rate_hz}")
    if not (math.isfinite(duration_s) and duration_s > 0):
        raise ValueError(f"duration must be positive, got {duration_s}")
    if jitter_ms < 0 or latency_ms < 0:
        raise ValueError("jitter and latency must not be negative")
    rng = rng or np.random.default_rng(0)
    gaps = list(gaps)
    n = int(math.ceil((duration_s - offset_s) * rate_hz - 1e-9))
    frames: list[StreamFrame] = []
    last = -1
    for i in range(max(0, n)):
        t = offset_s + i / rate_hz
        jitter = rng.normal(0.0, jitter_ms * 1e-3) if jitter_ms else 0.0
        stamp = start_ns + round((t + jitter) * _NS)
        stamp = max(stamp, last + 1)  # a camera driver never stamps backwards
        last = stamp
        delay = latency_ms * 1e-3 + abs(rng.normal(0.0, 0.3e-3))
        if any(t0 <= t < t1 for t0, t1 in gaps):
            continue
        frames.append(StreamFrame(stream, stamp, stamp + round(delay * _NS), t))
    return frames


def _interleave(*streams: list[StreamFrame]) -> list[StreamFrame]:
    merged = [f for s in streams for f in s]
    merged.sort(key=lambda f: (f.log_ns, f.stream))
    return merged


@dataclass
class StreamSpec:
    """Options of a generated two-camera stream (see :func:`stream_stamps`)."""

    rgb_rate: float = 30.0
    thermal_rate: float = 60.0
    jitter_ms: float = 0.0
    thermal_bits: int = 8
    thermal_offset_ms: float = 0.0  # exposure offset of the thermal camera
    latency_ms: float = 3.0
    start_ns: int = DEFAULT_START_NS
    rgb_gaps: list[tuple[float, float]] = field(default_factory=list)
    thermal_gaps: list[tuple[float, float]] = field(default_factory=list)
    rgb_encoding: str = "rgb8"
    seed: int = 0

    def frames(self, duration_s: float) -> list[StreamFrame]:
        rng = np.random.default_rng(self.seed)
        rgb = stream_stamps(duration_s, self.rgb_rate, "rgb", self.jitter_ms, self.latency_ms,
                            self.start_ns, 0.0, self.rgb_gaps, rng)
        thermal = stream_stamps(duration_s, self.thermal_rate, "thermal", self.jitter_ms,
                                self.latency_ms, self.start_ns, self.thermal_offset_ms * 1e-3,
                                self.thermal_gaps, rng)
        return _interleave(rgb, thermal)


def _to_bits(ir: np.ndarray, bits: int) -> np.ndarray:
    """An 8- or 16-bit thermal frame in the requested depth (8 -> 16: raw-count-like values
    ``7000 + 8 v``; 16 -> 8: stretched between the frame's minimum and maximum)."""
    if bits == 16:
        if ir.dtype == np.uint16:
            return ir
        return (7000 + 8 * ir.astype(np.uint16)).astype(np.uint16)
    if ir.dtype == np.uint8:
        return ir
    lo, hi = float(ir.min()), float(ir.max())
    scaled = (ir.astype(np.float32) - lo) * (255.0 / max(hi - lo, 1.0))
    return np.clip(scaled + 0.5, 0, 255).astype(np.uint8)


def synthetic_stream(
    duration_s: float, spec: StreamSpec, height: int = 48, width: int = 64,
    condition: str = "night", scene_seed: int = 0,
) -> Iterator[tuple[StreamFrame, np.ndarray]]:
    """Frames of a moving synthetic street scene: ``(frame, image)`` in log-time order."""
    from ..imaging.synthetic import SceneGenerator

    if spec.thermal_bits not in (8, 16):
        raise ValueError(f"thermal bits must be 8 or 16, got {spec.thermal_bits}")
    gen = SceneGenerator(scene_seed, height, width, condition, spec.thermal_bits)
    for frame in spec.frames(duration_s):
        pair = gen.render(frame.t)
        if frame.stream == "thermal":
            yield frame, pair.ir
        else:
            yield frame, pair.vis if spec.rgb_encoding == "rgb8" else pair.vis[..., ::-1]


def folder_stream(
    ir_dir: str | Path, vi_dir: str | Path, spec: StreamSpec,
) -> tuple[float, Iterator[tuple[StreamFrame, np.ndarray]]]:
    """A stream from a folder of pairs: colour frame ``k`` shows pair ``k`` (in name order);
    a thermal frame shows the pair on screen at its time. Returns the duration and the
    frames (``(frame, image)`` in log-time order); images are read lazily."""
    from ..imaging.io import find_pairs, read_color, read_thermal

    listing = find_pairs(ir_dir, vi_dir)
    if not listing.pairs:
        raise ValueError(f"no image pairs (same file names) in '{ir_dir}' and '{vi_dir}'")
    pairs = listing.pairs
    duration = len(pairs) / spec.rgb_rate

    def frames() -> Iterator[tuple[StreamFrame, np.ndarray]]:
        for frame in spec.frames(duration):
            k = min(len(pairs) - 1, int(math.floor(frame.t * spec.rgb_rate + 1e-6)))
            _, ir_file, vi_file = pairs[k]
            if frame.stream == "thermal":
                yield frame, _to_bits(read_thermal(ir_file), spec.thermal_bits)
            else:
                vis = read_color(vi_file)
                yield frame, vis if spec.rgb_encoding == "rgb8" else vis[..., ::-1]

    return duration, frames()


def write_stream(
    out: str | Path,
    frames: Iterable[tuple[StreamFrame, np.ndarray]],
    thermal_topic: str = "/thermal/image",
    rgb_topic: str = "/rgb/image",
    storage: str = "mcap",
    distro: str = "kilted",
    rgb_encoding: str = "rgb8",
    overwrite: bool = False,
    progress: bool = False,
    total: int | None = None,
    compressed: bool = False,
    camera_info: Mapping[str, CameraInfoData | None] | None = None,
) -> dict[str, int]:
    """Write generated frames to a new bag; returns the message count per topic.

    ``compressed``: write ``<topic>/compressed`` CompressedImage topics instead (colour
    JPEG, thermal PNG keeping 16 bits), as image_transport records them. ``camera_info``
    maps ``thermal``/``rgb`` to a calibration (None: a 60-degree pinhole of the frame's
    size); each image then gets a CameraInfo with its header on ``<camera>/camera_info``.
    """
    from tqdm import tqdm

    from ..streams.camera_info import camera_info_topic, pinhole_camera_info

    topics = {"thermal": thermal_topic, "rgb": rgb_topic}
    if compressed:
        topics = {k: f"{t.rstrip('/')}/compressed" for k, t in topics.items()}
    codecs: dict[str, str | None] = (
        {"thermal": "png", "rgb": "jpeg"} if compressed else {"thermal": None, "rgb": None})
    frames_of = {"thermal": "thermal_camera", "rgb": "rgb_camera"}
    infos: dict[str, CameraInfoData | None] = dict(camera_info or {})
    with ImageBagWriter(out, storage, distro, overwrite) as writer:
        for stream in ("thermal", "rgb"):
            writer.add_topic(topics[stream], COMPRESSED_TYPE if compressed else IMAGE_TYPE)
            if stream in infos:
                writer.add_topic(camera_info_topic(topics[stream]), CAMERA_INFO_TYPE)
        for frame, image in tqdm(frames, desc="write bag", unit="msg", total=total,
                                 disable=not progress):
            if frame.stream == "thermal":
                encoding = "mono16" if image.dtype == np.uint16 else "mono8"
            else:
                encoding, image = rgb_encoding, np.ascontiguousarray(image)
            writer.write_image(topics[frame.stream], image, encoding, frame.stamp_ns,
                               frames_of[frame.stream], frame.log_ns, codecs[frame.stream])
            if frame.stream in infos:
                calib = infos[frame.stream]
                if calib is None:
                    calib = infos[frame.stream] = pinhole_camera_info(*image.shape[:2])
                writer.write_camera_info(camera_info_topic(topics[frame.stream]), calib,
                                         frame.stamp_ns, frames_of[frame.stream], frame.log_ns)
        return dict(writer.counts)
