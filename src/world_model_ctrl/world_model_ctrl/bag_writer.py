"""ROS-free rosbag2 writer: CDR bytes in, a bag `ros2 bag info`/`ros2 bag play` can read out.

Wraps ``rosbags.rosbag2.Writer`` (format version 9) with the message definitions of the ROS 2
Kilted typestore, so the bag carries the same metadata a `ros2 bag record` bag carries.
"""
from __future__ import annotations

from pathlib import Path

from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

STORAGES = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}


class BagWriter:
    """Append serialised messages to a new rosbag2; ``close`` (or ``with``) finalises it."""

    def __init__(self, path: str | Path, storage: str = 'mcap'):
        if storage not in STORAGES:
            raise ValueError(f'storage must be one of {sorted(STORAGES)}, got {storage!r}')
        self.path = Path(path)
        if self.path.exists():
            raise FileExistsError(f'{self.path} exists already; rosbag2 never overwrites a bag')
        self.typestore = get_typestore(Stores.ROS2_KILTED)
        self._writer = Writer(self.path, version=9, storage_plugin=STORAGES[storage])
        self._writer.open()
        self._conns: dict[str, object] = {}
        self.counts: dict[str, int] = {}

    def add_topic(self, topic: str, msgtype: str) -> None:
        """Register ``topic`` with ``msgtype`` like 'sensor_msgs/msg/Image'."""
        if topic in self._conns:
            return
        if msgtype not in self.typestore.fielddefs:
            raise ValueError(f'unknown message type {msgtype!r} for topic {topic}')
        self._conns[topic] = self._writer.add_connection(topic, msgtype, typestore=self.typestore)
        self.counts[topic] = 0

    def write(self, topic: str, log_time_ns: int, cdr: bytes) -> None:
        self._writer.write(self._conns[topic], int(log_time_ns), cdr)
        self.counts[topic] += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
