"""ROS-free rosbag2 writer: CDR bytes in, a bag `ros2 bag info`/`ros2 bag play` can read out.

Wraps ``rosbags.rosbag2.Writer`` (format version 9) with the message definitions of the ROS 2
Kilted typestore, so the bag carries the same metadata a `ros2 bag record` bag carries.

A bag being written survives its writer being killed (SIGKILL, OOM killer, a crash; not a power
cut: nothing is fsynced). ``flush`` hands everything written so far to the operating system;
``write`` and ``flush_if_due`` call it at least every ``flush_period`` (0.5 s) while messages come:

* mcap: the open chunk is closed and written with its message indexes, followed by a
  provisional summary and footer, so the file is a complete indexed mcap any reader opens. The
  next write cuts the provisional summary off and goes on from there; ``close`` writes the real
  one. (With a large summary, a long recording at a high data rate, the provisional one is
  rewritten less often, at most ~1 MB/s; the data itself is still written every flush.)
* sqlite3: the transaction is committed. Pages reach the database file only at a commit
  (``cache_spill`` off), so between commits the file always holds the last committed state.
* ``metadata.yaml`` is written at open and rewritten, atomically, when a topic is added and at
  most once a second while messages come (its counts can lag the storage file by that much).

``open_killed`` reads what a killed writer left when a reader fails on it: an mcap cut off in the
middle of a write (read up to its last complete chunk), a sqlite3 database with a hot journal
(rolled back in a temporary copy).
"""
from __future__ import annotations

import io
import os
import shutil
import sqlite3
import struct
import tempfile
import time
from io import BytesIO
from pathlib import Path
from typing import Optional

import yaml
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.rosbag2.metadata import dump_qos_v9
from rosbags.rosbag2.storage_mcap import write_channel, write_schema
from rosbags.typesys import Stores, get_typestore

STORAGES = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}
FLUSH_PERIOD = 0.5              # s: at most this much received data is only in memory
METADATA_PERIOD = 1.0           # s: metadata.yaml refresh while messages come
TAIL_BYTES_PER_S = 1e6          # budget for rewriting a large provisional mcap summary

MCAP_MAGIC = b'\x89MCAP0\r\n'
OP_FOOTER, OP_SCHEMA, OP_CHANNEL, OP_CHUNK, OP_MESSAGE_INDEX = 0x02, 0x03, 0x04, 0x06, 0x07
OP_CHUNK_INDEX, OP_STATISTICS, OP_SUMMARY_OFFSET, OP_DATA_END = 0x08, 0x0B, 0x0E, 0x0F


class BagWriteError(OSError):
    """Writing to the bag failed (disk full, I/O error): the bag keeps what was flushed before."""


class BagWriter:
    """Append serialised messages to a new rosbag2; ``close`` (or ``with``) finalises it."""

    def __init__(self, path: str | Path, storage: str = 'mcap',
                 flush_period: float = FLUSH_PERIOD):
        if storage not in STORAGES:
            raise ValueError(f'storage must be one of {sorted(STORAGES)}, got {storage!r}')
        self.path = Path(path)
        if self.path.exists():
            raise FileExistsError(f'{self.path} exists already; rosbag2 never overwrites a bag')
        self.storage = storage
        self.flush_period = flush_period
        self.typestore = get_typestore(Stores.ROS2_KILTED)
        self._writer = Writer(self.path, version=9, storage_plugin=STORAGES[storage])
        self._writer.open()
        self._conns: dict[str, object] = {}
        self.counts: dict[str, int] = {}
        self.failed: Optional[BagWriteError] = None
        self.flushed = 0                # messages handed to the OS
        self._dirty = False
        self._last_flush = self._last_meta = self._last_tail = time.monotonic()
        self._tail: Optional[_McapTail] = None
        try:
            if storage == 'mcap':
                self._tail = _McapTail(self._writer.storage)
                self._tail.write_tail()     # a valid (empty) mcap from the start
            else:
                conn = self._writer.storage.conn
                # dirty pages stay in memory until commit: between commits the file is consistent
                conn.execute('PRAGMA cache_spill=OFF')
                # a killed process loses nothing handed to the OS; close() syncs as before
                conn.execute('PRAGMA synchronous=OFF')
            self._write_metadata()
        except BaseException:
            self._writer.abort()
            raise

    def add_topic(self, topic: str, msgtype: str) -> None:
        """Register ``topic`` with ``msgtype`` like 'sensor_msgs/msg/Image'."""
        if topic in self._conns:
            return
        if msgtype not in self.typestore.fielddefs:
            raise ValueError(f'unknown message type {msgtype!r} for topic {topic}')
        self._check()
        try:
            conn = self._writer.add_connection(topic, msgtype, typestore=self.typestore)
        except (OSError, sqlite3.Error) as err:
            self._fail(err)
        self._conns[topic] = conn
        self.counts[topic] = 0
        self._dirty = True
        self.flush()        # the topic is in the files before its first message

    def write(self, topic: str, log_time_ns: int, cdr: bytes) -> None:
        """Append one message; raises ``BagWriteError`` when the bag cannot be written."""
        self._check()
        conn = self._conns[topic]
        try:
            self._writer.write(conn, int(log_time_ns), cdr)
            self.counts[topic] += 1
            self._dirty = True
            if self._tail is not None and self._tail.chunk_closed():
                self._after_data(time.monotonic())   # a full chunk went out: end the file
        except (OSError, sqlite3.Error) as err:
            self._fail(err)
        self.flush_if_due()

    def flush_if_due(self) -> None:
        """``flush`` when unflushed data is ``flush_period`` old (call it from a timer)."""
        if self._dirty and time.monotonic() - self._last_flush >= self.flush_period:
            self.flush()

    def flush(self) -> None:
        """Hand everything written so far to the OS, so that it survives a kill of this process."""
        if not self._dirty or self.failed is not None:
            return
        now = time.monotonic()
        try:
            if self._tail is not None:
                self._tail.close_chunk()
                self._after_data(now, force=True)
            else:
                self._writer.storage.conn.commit()
            if now - self._last_meta >= METADATA_PERIOD or len(self._conns) != self._meta_topics:
                self._write_metadata()
        except (OSError, sqlite3.Error) as err:
            self._fail(err)
        self.flushed = sum(self.counts.values())
        self._dirty = False
        self._last_flush = now

    def _after_data(self, now: float, force: bool = False) -> None:
        """After chunk data went out: write the provisional summary if its byte budget allows."""
        size = self._tail.summary_size()
        if force and size < 65536 or now - self._last_tail >= size / TAIL_BYTES_PER_S:
            self._tail.write_tail()
            self._last_tail = now
        else:
            self._tail.file.flush()

    def _write_metadata(self) -> None:
        path = self.path / 'metadata.yaml'
        tmp = path.with_suffix('.yaml.tmp')
        tmp.write_text(metadata_yaml(self._writer), 'utf8')
        tmp.replace(path)
        self._last_meta = time.monotonic()
        self._meta_topics = len(self._conns)

    def _check(self) -> None:
        if self.failed is not None:
            raise BagWriteError(*self.failed.args)    # a new one: no traceback piling up
        if self._writer is None:
            raise ValueError(f'{self.path}: bag is closed')

    def _fail(self, err: Exception) -> None:
        self.failed = BagWriteError(
            f'cannot write to bag {self.path}: {type(err).__name__}: {err}; writing stopped, '
            f'the bag keeps the {self.flushed} messages flushed before')
        raise self.failed from err

    def close(self) -> None:
        if self._writer is None:
            return
        writer, self._writer = self._writer, None
        if self.failed is not None:    # finishing would write more into a broken file
            try:
                writer.abort()
            except Exception:
                pass                   # the same error again, already reported
            return
        try:
            if self.storage == 'sqlite3':   # the last commit syncs the whole file, as before
                writer.storage.conn.commit()
                writer.storage.conn.execute('PRAGMA synchronous=FULL')
            writer.close()
        except BaseException:
            writer.abort()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def metadata_yaml(writer: Writer) -> str:
    """metadata.yaml text of ``writer`` now: what rosbags' ``Writer.close`` writes at the end."""
    path = writer.storage.path
    count = sum(writer.counts.values())
    start = writer.min_timestamp if count else 0
    duration = max(0, writer.max_timestamp - writer.min_timestamp) if count else 0
    info = {
        'version': writer.version,
        'storage_identifier': writer.storage_plugin.name.lower(),
        'relative_file_paths': [path.name],
        'duration': {'nanoseconds': duration},
        'starting_time': {'nanoseconds_since_epoch': start},
        'message_count': count,
        'topics_with_message_count': [
            {'topic_metadata': {'name': c.topic, 'type': c.msgtype,
                                'serialization_format': c.ext.serialization_format,
                                'offered_qos_profiles': dump_qos_v9(c.ext.offered_qos_profiles),
                                'type_description_hash': c.digest},
             'message_count': writer.counts[c.id]}
            for c in writer.connections],
        'compression_format': '',
        'compression_mode': '',
        'files': [{'path': path.name, 'starting_time': {'nanoseconds_since_epoch': start},
                   'duration': {'nanoseconds': duration}, 'message_count': count}],
        'custom_data': writer.custom_data or None,
        'ros_distro': 'rosbags',
    }
    return yaml.safe_dump({'rosbag2_bagfile_information': info}, default_flow_style=False,
                          sort_keys=False)


# --- mcap: a provisional summary after the data --------------------------------------------------

def _record(op: int, body: bytes) -> bytes:
    return struct.pack('<BQ', op, len(body)) + body


def _mcap_tail(data_end: int, schemas: bytes, channels: bytes, chunk_indexes: bytes,
               statistics: Optional[bytes]) -> bytes:
    """DataEnd, summary (records given serialised), summary offsets, footer, magic."""
    out = bytearray(_record(OP_DATA_END, struct.pack('<I', 0)))
    summary_start = data_end + len(out)
    groups = [(OP_SCHEMA, schemas), (OP_CHANNEL, channels), (OP_CHUNK_INDEX, chunk_indexes)]
    if statistics is not None:
        groups.append((OP_STATISTICS, _record(OP_STATISTICS, statistics)))
    offsets = []
    for op, data in groups:
        if data:
            offsets.append(_record(OP_SUMMARY_OFFSET, struct.pack(
                '<BQQ', op, data_end + len(out), len(data))))
            out += data
    offset_start = data_end + len(out)
    for rec in offsets:
        out += rec
    out += _record(OP_FOOTER, struct.pack('<QQI', summary_start, offset_start, 0))
    out += MCAP_MAGIC
    return bytes(out)


class _CutFile:
    """The mcap writer's file: the first write after a provisional tail cuts the tail off."""

    def __init__(self, f):
        self.f = f
        self.tail_at: Optional[int] = None

    def write(self, data) -> int:
        if self.tail_at is not None:
            self.f.truncate(self.tail_at)     # never new bytes over a stale tail (see open_killed)
            self.tail_at = None
        return self.f.write(data)

    def tell(self) -> int:
        return self.f.tell()

    def flush(self) -> None:
        self.f.flush()

    def close(self) -> None:
        self.f.close()


class _McapTail:
    """Provisional summaries for a ``rosbags`` ``McapWriter`` (pinned rosbags internals)."""

    def __init__(self, storage):
        for name in ('bio', 'chunk', 'chunks', 'schemas', 'channels', 'channel_stats',
                     'close_chunk', 'message_start_time', 'message_end_time'):
            if not hasattr(storage, name):
                raise RuntimeError(f'rosbags McapWriter has no {name!r}: this BagWriter needs '
                                   f'the rosbags version pinned in requirements.txt')
        self.storage = storage
        self.cut = _CutFile(storage.bio)
        storage.bio = self.cut
        self.file = self.cut.f
        self._indexes = bytearray()     # chunk index records so far
        self._n_chunks = 0              # chunks in the last provisional summary
        self._seen = 0                  # chunks handled by chunk_closed

    def chunk_closed(self) -> bool:
        """Whether the writer closed a chunk (when full) since the last call."""
        if len(self.storage.chunks) == self._seen:
            return False
        self._seen = len(self.storage.chunks)
        return True

    def close_chunk(self) -> None:
        if self.storage.chunk.bio.tell():
            self.storage.close_chunk()
        self._seen = len(self.storage.chunks)

    def summary_size(self) -> int:
        return len(self._indexes) + 100 * (len(self.storage.chunks) - self._n_chunks)

    def write_tail(self) -> None:
        st = self.storage
        if self.cut.tail_at is not None:
            return                      # nothing written since the last one
        for rec in st.chunks[self._n_chunks:]:
            self._indexes += _record(OP_CHUNK_INDEX, rec.getvalue())
        self._n_chunks = len(st.chunks)
        schemas, channels = BytesIO(), BytesIO()
        for s in st.schemas:
            write_schema(schemas, s)
        for c in st.channels:
            write_channel(channels, c, st.schemas)
        count = sum(st.channel_stats.values())
        stats = struct.pack('<QHIIIIQQI', count, len(st.schemas), len(st.channels), 0, 0,
                            len(st.chunks), st.message_start_time if count else 0,
                            st.message_end_time if count else 0, 10 * len(st.channel_stats))
        stats += b''.join(struct.pack('<HQ', cid, n)
                          for cid, n in sorted(st.channel_stats.items()))
        pos = self.cut.tell()
        self.file.write(_mcap_tail(pos, schemas.getvalue(), channels.getvalue(),
                                   bytes(self._indexes), stats))
        self.file.flush()
        self.file.seek(pos)
        self.cut.tail_at = pos


# --- reading what a killed writer left ---------------------------------------------------------

class Recovered:
    """A readable stand-in for a bag a writer was killed in (pass ``path`` to AnyReader)."""

    def __init__(self, path, note: str, tmpdir: Optional[tempfile.TemporaryDirectory] = None):
        self.path = path
        self.note = note
        self._tmpdir = tmpdir

    def close(self) -> None:
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None


def open_killed(location: Path) -> Optional[Recovered]:
    """A stand-in for the bag at ``location`` (directory or storage file) that a reader failed
    on, if it is what a killed writer leaves; None if it is not (or is beyond repair)."""
    location = Path(location)
    files = [location] if location.is_file() else sorted(
        p for p in location.iterdir() if p.suffix in ('.mcap', '.db3'))
    if len(files) != 1:
        return None
    if files[0].suffix == '.mcap':
        return _open_killed_mcap(files[0])
    return _open_killed_sqlite(files[0])


def _open_killed_sqlite(db: Path) -> Optional[Recovered]:
    side = [p for p in (Path(f'{db}-journal'), Path(f'{db}-wal'))
            if p.exists() and p.stat().st_size]
    if not side:
        return None
    tmp = tempfile.TemporaryDirectory(prefix='wmc_bag_')
    try:
        for p in (db, *side):
            shutil.copyfile(p, Path(tmp.name) / p.name)
        copy = Path(tmp.name) / db.name
        with sqlite3.connect(copy) as conn:         # a normal open rolls the journal back
            conn.execute('SELECT count(*) FROM messages').fetchone()
        conn.close()
    except Exception:
        tmp.cleanup()
        return None
    return Recovered(copy, f'{db.name} was being written when its writer stopped (hot '
                           f'{side[0].name.rsplit("-", 1)[1]}); read its last committed state '
                           f'from a rolled-back copy', tmp)


def _open_killed_mcap(path: Path) -> Optional[Recovered]:
    scan = _scan_mcap(path)
    if scan is None:
        return None
    end, schemas, channels, indexes, n_chunks, size = scan
    if not channels:
        return None                        # nothing to read in what is left
    tail = _mcap_tail(end, schemas, channels, indexes, None)
    lost = size - end
    return Recovered(_McapView(path, end, tail),
                     f'{path.name} was not closed (recording killed?): read its {n_chunks} '
                     f'complete chunks, {lost} trailing bytes dropped; `mcap recover` makes a '
                     f'standalone fixed copy')


def _chunk_records(data: bytes):
    """(op, body) of the records inside an uncompressed chunk."""
    pos = 0
    while pos + 9 <= len(data):
        op, n = struct.unpack_from('<BQ', data, pos)
        if pos + 9 + n > len(data):
            raise ValueError('record crosses the chunk end')
        yield op, data[pos + 9:pos + 9 + n]
        pos += 9 + n


def _decompress(comp: str, data: bytes, size: int) -> bytes:
    if comp == '':
        return data
    if comp == 'lz4':
        from lz4.frame import decompress
        return decompress(data)
    if comp == 'zstd':
        try:
            from compression import zstd
        except ImportError:
            from backports import zstd
        return zstd.decompress(data)
    raise ValueError(f'unknown chunk compression {comp!r}')


def _scan_mcap(path: Path):
    """Walk the data section of a footerless/cut mcap: the end of its last complete chunk (with
    its message indexes) and the summary records that describe everything before it."""
    with path.open('rb') as f:
        size = os.fstat(f.fileno()).st_size
        if f.read(8) != MCAP_MAGIC:
            return None
        op, length = struct.unpack('<BQ', f.read(9).ljust(9, b'\xff'))
        if op != 0x01 or 17 + length > size:
            return None                    # not even a whole header record
        schemas, channels = {}, {}
        indexes = bytearray()
        n_chunks = 0
        pending = None            # the last chunk: [start, length, header, {cid: offset}, end]
        good = pos = 8

        def chunk_ok(ch, last: bool) -> bool:
            """Read a chunk's schemas/channels; the last one must have all its message indexes."""
            start, length, (t0, t1, usize, crc, comp, csize), idx, _ = ch
            f.seek(start + 9 + length - csize)
            try:
                data = _decompress(comp, f.read(csize), usize)
                if len(data) != usize:
                    return False
                msg_cids = set()
                for op, body in _chunk_records(data):
                    if op in (OP_SCHEMA, OP_CHANNEL):
                        (schemas if op == OP_SCHEMA else channels)[
                            struct.unpack_from('<H', body)[0]] = _record(op, body)
                    elif op == 0x05:
                        msg_cids.add(struct.unpack_from('<H', body)[0])
            except Exception:
                return False
            return not last or msg_cids == set(idx)

        def take(ch) -> None:
            nonlocal indexes, n_chunks
            start, length, (t0, t1, usize, crc, comp, csize), idx, idx_end = ch
            offs = b''.join(struct.pack('<HQ', cid, off) for cid, off in idx.items())
            body = (struct.pack('<QQQQI', t0, t1, start, 9 + length, len(offs)) + offs
                    + struct.pack('<Q', idx_end - start - 9 - length)
                    + struct.pack('<I', len(comp)) + comp.encode()
                    + struct.pack('<QQ', csize, usize))
            indexes += _record(OP_CHUNK_INDEX, body)
            n_chunks += 1

        while pos + 9 <= size:
            f.seek(pos)
            op, length = struct.unpack('<BQ', f.read(9))
            end = pos + 9 + length
            if end > size:
                break
            if op == OP_MESSAGE_INDEX:
                if pending is None:
                    break
                pending[3][struct.unpack('<H', f.read(2))[0]] = pos
                pending[4] = end
                pos = end
                continue
            if pending is not None:        # a record after the chunk's indexes: chunk is whole
                if not chunk_ok(pending, last=False):
                    break
                take(pending)
                good, pending = pending[4], None
                f.seek(pos + 9)
            if op in (OP_DATA_END, OP_FOOTER, OP_CHUNK_INDEX, OP_STATISTICS, OP_SUMMARY_OFFSET):
                break                      # the data section ends here
            if op == OP_CHUNK:
                head = f.read(min(length, 4096))
                if len(head) < 40:
                    break
                t0, t1, usize, crc, clen = struct.unpack_from('<QQQII', head)
                comp = head[32:32 + clen].decode(errors='replace')
                if len(head) < 40 + clen:
                    break
                (csize,) = struct.unpack_from('<Q', head, 32 + clen)
                if 40 + clen + csize != length or (comp == '' and csize != usize):
                    break
                pending = [pos, length, (t0, t1, usize, crc, comp, csize), {}, end]
            elif op in (OP_SCHEMA, OP_CHANNEL):
                body = f.read(length)
                key = struct.unpack_from('<H', body)[0]
                (schemas if op == OP_SCHEMA else channels)[key] = _record(op, body)
                good = end
            else:                          # header, message, attachment, metadata...
                good = end
            pos = end
        if pending is not None and chunk_ok(pending, last=True):
            take(pending)
            good = pending[4]
    return (good, b''.join(schemas[k] for k in sorted(schemas)),
            b''.join(channels[k] for k in sorted(channels)), bytes(indexes), n_chunks, size)


class _Concat(io.RawIOBase):
    """Read-only: the first ``end`` bytes of a file, then ``tail``."""

    def __init__(self, path: Path, end: int, tail: bytes):
        self._f = path.open('rb')
        self._end, self._tail, self._pos = end, tail, 0
        self._size = end + len(tail)

    def readable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self._pos

    def seek(self, offset, whence=0):
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, b):
        n = 0
        want = len(b)
        while n < want and self._pos < self._size:
            if self._pos < self._end:
                self._f.seek(self._pos)
                chunk = self._f.read(min(want - n, self._end - self._pos))
                if not chunk:
                    break
            else:
                off = self._pos - self._end
                chunk = self._tail[off:off + want - n]
            b[n:n + len(chunk)] = chunk
            n += len(chunk)
            self._pos += len(chunk)
        return n

    def close(self):
        self._f.close()
        super().close()


class _McapView:
    """Path-like stand-in for a cut mcap (what rosbags' readers use of a path)."""

    suffix = '.mcap'

    def __init__(self, path: Path, end: int, tail: bytes):
        self._path, self._end, self._tail = path, end, tail
        self.name, self.stem = path.name, path.stem

    def exists(self) -> bool:
        return True

    def is_dir(self) -> bool:
        return False

    def is_file(self) -> bool:
        return True

    def open(self, mode: str = 'rb', *args, **kwargs):
        if mode != 'rb':
            raise PermissionError(f'{self._path}: recovered view is read-only')
        return io.BufferedReader(_Concat(self._path, self._end, self._tail))

    def stat(self, *, follow_symlinks: bool = True):
        return os.stat_result((0o100444, 0, 0, 1, 0, 0, self._end + len(self._tail), 0, 0, 0))

    def __str__(self) -> str:
        return str(self._path)

    def __repr__(self) -> str:
        return f'recovered view of {self._path}'
