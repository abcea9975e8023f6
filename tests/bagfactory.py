"""Synthetic rosbag2 bags for tests, written with rosbags (no ROS needed).

``SynthBag`` collects messages and writes them in log-time order; ``episode_bag`` writes the
standard pattern the data tests use: frame k shows pixel value k, command k is (k, 100 + k) and
reward k is -k, so every pairing can be read back from the numbers.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import cv2
import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

T0 = 1_700_000_000 * 10**9      # wall-clock log time of frame 0, ns
SIM0 = 5 * 10**9                # sim-time header stamp of frame 0, ns
PERIOD = 100_000_000            # 10 Hz camera
STORAGES = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}


def _rgb_to_encoding(rgb: np.ndarray, encoding: str) -> np.ndarray:
    """An RGB (or gray) image laid out in ``encoding``, so decoding it gives ``rgb`` back."""
    if rgb.ndim == 2 and encoding not in ('mono8', 'mono16'):
        rgb = np.repeat(rgb[..., None], 3, axis=2)
    alpha = np.full(rgb.shape[:2] + (1,), 255, np.uint8) if rgb.ndim == 3 else None
    return {
        'rgb8': lambda: rgb,
        'bgr8': lambda: rgb[..., ::-1],
        'rgba8': lambda: np.concatenate([rgb, alpha], axis=2),
        'bgra8': lambda: np.concatenate([rgb[..., ::-1], alpha], axis=2),
        'mono8': lambda: rgb if rgb.ndim == 2 else rgb[..., 0],
        'mono16': lambda: (rgb if rgb.ndim == 2 else rgb[..., 0]).astype(np.uint16) * 257,
    }[encoding]()


class SynthBag:
    """Collect messages (any order) and write one rosbag2 with ``write()``."""

    def __init__(self, path, storage: str = 'mcap'):
        self.path = Path(path)
        self.storage = storage
        self.ts = get_typestore(Stores.ROS2_HUMBLE)
        self.msgs: list[tuple[int, str, str, bytes]] = []

    def _t(self, name):
        return self.ts.types[name]

    def _header(self, stamp_ns: int, frame_id: str = ''):
        t = self._t('builtin_interfaces/msg/Time')(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9)
        return self._t('std_msgs/msg/Header')(stamp=t, frame_id=frame_id)

    def add(self, log_ns: int, topic: str, msgtype: str, msg) -> None:
        self.msgs.append((int(log_ns), topic, msgtype, self.ts.serialize_cdr(msg, msgtype)))

    def image(self, log_ns: int, stamp_ns: int, rgb: np.ndarray, encoding: str = 'rgb8',
              topic: str = '/camera/image_raw', pad: int = 0) -> None:
        """``rgb`` (H, W, 3) or gray (H, W) uint8; ``pad`` extra bytes at the end of each row."""
        px = np.ascontiguousarray(_rgb_to_encoding(np.asarray(rgb, np.uint8), encoding))
        h, w = px.shape[:2]
        rows = px.view(np.uint8).reshape(h, -1)
        if pad:
            rows = np.concatenate([rows, np.full((h, pad), 77, np.uint8)], axis=1)
        msg = self._t('sensor_msgs/msg/Image')(
            header=self._header(stamp_ns, 'camera'), height=h, width=w, encoding=encoding,
            is_bigendian=0, step=rows.shape[1], data=rows.reshape(-1).copy())
        self.add(log_ns, topic, 'sensor_msgs/msg/Image', msg)

    def raw_image(self, log_ns: int, stamp_ns: int, height: int, width: int, encoding: str,
                  step: int, data: bytes, topic: str = '/camera/image_raw') -> None:
        """An Image message exactly as given (for malformed frames)."""
        msg = self._t('sensor_msgs/msg/Image')(
            header=self._header(stamp_ns, 'camera'), height=height, width=width,
            encoding=encoding, is_bigendian=0, step=step,
            data=np.frombuffer(bytes(data), np.uint8).copy())
        self.add(log_ns, topic, 'sensor_msgs/msg/Image', msg)

    def malformed(self, log_ns: int, stamp_ns: int, kind: str, size: int = 8) -> None:
        """A frame image_to_rgb cannot convert: see MALFORMED."""
        h = w = size
        args = {'no_encoding': (h, w, '', 3 * w, bytes(3 * w * h)),
                'unknown_encoding': (h, w, 'rgb9', 3 * w, bytes(3 * w * h)),
                'short': (h, w, 'rgb8', 3 * w, bytes(3 * w * h // 2)),
                'empty': (0, 0, 'rgb8', 0, b''),
                '16UC1': (h, w, '16UC1', 2 * w, bytes(2 * w * h)),
                '32FC1': (h, w, '32FC1', 4 * w,
                          np.full(w * h, np.nan, np.float32).tobytes())}[kind]
        self.raw_image(log_ns, stamp_ns, *args)

    def compressed(self, log_ns: int, stamp_ns: int, rgb: np.ndarray, fmt: str = 'png',
                   topic: str = '/camera/image_raw') -> None:
        img = rgb if rgb.ndim == 2 else cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        ok, buf = cv2.imencode('.' + fmt, img)
        assert ok
        msg = self._t('sensor_msgs/msg/CompressedImage')(
            header=self._header(stamp_ns, 'camera'), format=fmt, data=buf.reshape(-1))
        self.add(log_ns, topic, 'sensor_msgs/msg/CompressedImage', msg)

    def reward(self, log_ns: int, value: float, topic: str = '/reward') -> None:
        msg = self._t('std_msgs/msg/Float32')(data=float(value))
        self.add(log_ns, topic, 'std_msgs/msg/Float32', msg)

    def cmd(self, log_ns: int, vx: float = 0.0, vy: float = 0.0, wz: float = 0.0,
            stamped: bool = False, topic: str = '/cmd_vel') -> None:
        v3 = self._t('geometry_msgs/msg/Vector3')
        twist = self._t('geometry_msgs/msg/Twist')(linear=v3(x=vx, y=vy, z=0.0),
                                                   angular=v3(x=0.0, y=0.0, z=wz))
        if stamped:
            msg = self._t('geometry_msgs/msg/TwistStamped')(header=self._header(log_ns),
                                                            twist=twist)
            self.add(log_ns, topic, 'geometry_msgs/msg/TwistStamped', msg)
        else:
            self.add(log_ns, topic, 'geometry_msgs/msg/Twist', twist)

    def odom(self, log_ns: int, stamp_ns: int, x: float, y: float, topic: str = '/odom',
             frame_id: str = 'odom') -> None:
        """nav_msgs/Odometry at (x, y), facing +x, standing still."""
        t = self._t
        pose = t('geometry_msgs/msg/Pose')(
            position=t('geometry_msgs/msg/Point')(x=float(x), y=float(y), z=0.0),
            orientation=t('geometry_msgs/msg/Quaternion')(x=0.0, y=0.0, z=0.0, w=1.0))
        v3 = t('geometry_msgs/msg/Vector3')(x=0.0, y=0.0, z=0.0)
        msg = t('nav_msgs/msg/Odometry')(
            header=self._header(stamp_ns, frame_id), child_frame_id='base_link',
            pose=t('geometry_msgs/msg/PoseWithCovariance')(pose=pose,
                                                           covariance=np.zeros(36)),
            twist=t('geometry_msgs/msg/TwistWithCovariance')(
                twist=t('geometry_msgs/msg/Twist')(linear=v3, angular=v3),
                covariance=np.zeros(36)))
        self.add(log_ns, topic, 'nav_msgs/msg/Odometry', msg)

    def marker(self, log_ns: int, stamp_ns: int, index: int,
               topic: str = '/room_sim/episode_start') -> None:
        self.add(log_ns, topic, 'std_msgs/msg/Header', self._header(stamp_ns, str(index)))

    def write(self) -> Path:
        with Writer(self.path, version=9, storage_plugin=STORAGES[self.storage]) as w:
            conns = {}
            for log_ns, topic, msgtype, data in sorted(self.msgs, key=lambda m: m[0]):
                if (topic, msgtype) not in conns:
                    conns[(topic, msgtype)] = w.add_connection(topic, msgtype, typestore=self.ts)
                w.write(conns[(topic, msgtype)], log_ns, data)
        return self.path


def frame_time(k: int) -> int:
    return T0 + k * PERIOD


def frame_stamp(k: int) -> int:
    return SIM0 + k * PERIOD


def episode_bag(path, n: int = 20, storage: str = 'mcap', size: int = 8,
                drop: Iterable[int] = (), duplicate: Iterable[int] = (),
                markers: Iterable[int] = (), no_reward: Iterable[int] = (),
                stamped: bool = False, stamp_of=frame_stamp, reward_at: dict = None,
                cmd_at: dict = None, malformed: dict = None) -> Path:
    """Frames k = 0..n-1 at 10 Hz showing value k (mod 256); command k = (k, 100 + k) logged
    30 ms after frame k; reward -k logged 2 ms before it (as room_sim does).

    ``drop``: frames never published (their commands still are); ``duplicate``: frames re-sent
    10 ms later with the same stamp and value 200; ``markers``: frames that get an episode-start
    marker; ``no_reward``: frames without a reward; ``stamp_of(k)``: header stamp of frame k;
    ``reward_at`` {k: value}: reward k replaced (NaN, inf...); ``cmd_at`` {k: value}: linear.x
    of command k replaced; ``malformed`` {k: kind}: frame k is a ``SynthBag.malformed`` image.
    """
    bag = SynthBag(path, storage)
    drop, duplicate, no_reward = set(drop), set(duplicate), set(no_reward)
    reward_at, cmd_at, malformed = reward_at or {}, cmd_at or {}, malformed or {}
    for k in range(n):
        t = frame_time(k)
        if k in malformed:
            bag.malformed(t, stamp_of(k), malformed[k], size)
        elif k not in drop:
            bag.image(t, stamp_of(k), np.full((size, size, 3), k % 256, np.uint8))
        if k not in drop and k not in no_reward:
            bag.reward(t - 2_000_000, reward_at.get(k, -float(k)))
        if k in duplicate:
            bag.image(t + 10_000_000, stamp_of(k), np.full((size, size, 3), 200, np.uint8))
        bag.cmd(t + 30_000_000, cmd_at.get(k, float(k)), 100.0 + k, wz=-float(k),
                stamped=stamped)
    for i, k in enumerate(markers):
        bag.marker(frame_time(k) - 5_000_000, stamp_of(k), i + 1)
    return bag.write()


def truncate(path: Path, fraction: float = 0.5) -> Path:
    """Cut the bag's storage file(s) to ``fraction`` of their size (a killed recording)."""
    for f in Path(path).iterdir():
        if f.suffix in ('.mcap', '.db3'):
            with open(f, 'r+b') as fh:
                fh.truncate(int(f.stat().st_size * fraction))
    return Path(path)


def random_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
