"""ROS-free dataset: rosbag2 bags -> aligned episodes -> an on-disk cache -> fixed-length windows.

A bag is read with ``rosbags.highlevel.AnyReader`` (message definitions come from the bag, so
mcap and sqlite3 bags from any ROS 2 distribution work; bags without definitions fall back to the
Humble typestore). Images go through ``rosbags-image`` and are returned as RGB uint8.

Alignment rules (all pairing is done in bag *log time*, the recorder's receive clock, in ns):

* Frame ``x_t`` is paired with ``a_{t-1}``: the latest command on ``cmd_topic`` logged strictly
  before the frame and no older than ``cmd_tolerance`` (default 0.5 s). The first frame of every
  episode, and a frame with no command in tolerance, gets ``a_{t-1} = 0``. So ``actions[t]`` is the
  command that moved the robot from ``x_{t-1}`` to ``x_t``.
* Reward ``r_t`` is, with ``reward_match='before'`` (default), the latest message on
  ``reward_topic`` logged at or before the frame (room_sim publishes a frame's reward just before
  the frame, and under load the gap to the *next* reward can be shorter); with 'nearest', the one
  nearest in log time. Either way within ``reward_tolerance`` (default 0.05 s). A frame without
  one is dropped, which ends its episode.
* Images whose header stamp equals the previous image's are re-sends: dropped (the first is kept).
* A new episode starts at an episode marker (a ``std_msgs/Header`` on ``episode_topic`` whose stamp
  equals the header stamp of the new episode's first frame: the frame with stamp >= marker and the
  previous frame's stamp < marker), where image header stamps go backwards (a simulator restart),
  and at gaps: consecutive images further apart than ``gap_factor`` (default 1.5) x the median
  image period, or more than ``max_gap`` (default 1 s), in log time *and* in header-stamp time. A
  lost frame shows in both clocks; a delivery hiccup, or a lockstep simulator whose wall-clock
  rate follows the planner, shows only in log time and its frames are still consecutive.
  Header stamps are only compared with header stamps (in simulation they are sim time). If a
  driver leaves them constant (over half the frames repeat the previous stamp), stamp rules are
  skipped and gaps are found in log time alone.
* Bad data never enters an episode: a frame whose reward or whose command a_{t-1} is NaN/inf,
  and a frame ``image_to_rgb`` cannot convert (unknown or empty encoding, too little data, 0x0,
  depth/float images), is dropped like a frame without reward (its episode ends there). Such
  messages are counted per bag and topic and logged as a warning (docs/data.md, "Bad data").
* Episodes shorter than ``min_length`` (default 2) frames are dropped.

Images of any ``sensor_msgs/Image`` encoding (rgb8, bgr8, mono8, rgba8, 16-bit, ...) or
``sensor_msgs/CompressedImage`` (jpeg/png) become RGB uint8 (mono -> 3 equal channels), resized to
``image_size`` x ``image_size`` with ``cv2.INTER_AREA`` when the size differs. Actions are the
``action_fields`` of each command (Twist, or TwistStamped where 'linear.x' means twist.linear.x).

Use: ``load_episodes`` (in memory) or ``build_cache`` (bag by bag into a memory-mapped
``EpisodeCache``, reused while bags and config are unchanged), ``split_episodes`` by episode,
then ``SequenceDataset`` windows for training. A bad bag raises ``BagError`` naming the file.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import struct
import uuid
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Iterable, Iterator, Optional, Sequence, Union

import cv2
import numpy as np
from rosbags.highlevel import AnyReader
from rosbags.image import compressed_image_to_cvimage, message_to_cvimage
from rosbags.image.image import to_cvtype
from rosbags.typesys import Stores, get_typestore
from tqdm import tqdm

from world_model_ctrl.configs import from_dict

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
IMAGE_TYPES = ('sensor_msgs/msg/Image', 'sensor_msgs/msg/CompressedImage')
STORAGE_SUFFIXES = {'.mcap': 'mcap', '.db3': 'sqlite3'}
CACHE_VERSION = 3                # 2: frames with bad data dropped; 3: meta frame_interval_s
PROGRESS_MIN_MESSAGES = 5000     # show a progress bar only for reads at least this long


class BagError(ValueError):
    """A bag that cannot be used: missing, truncated, corrupt or lacking a needed topic."""


@dataclass
class DataConfig:
    """Which topics make an episode and how they are aligned (times in seconds)."""

    image_topic: str = '/camera/image_raw'          # sensor_msgs/Image or CompressedImage
    reward_topic: str = '/reward'                   # std_msgs/Float32
    cmd_topic: str = '/cmd_vel'                     # geometry_msgs/Twist or TwistStamped
    episode_topic: Optional[str] = '/room_sim/episode_start'  # std_msgs/Header; optional
    action_fields: Sequence[str] = ('linear.x', 'linear.y')  # command fields forming the action
    image_size: int = 64                            # square model input, pixels
    cmd_tolerance: float = 0.5                      # oldest command still paired with a frame
    reward_tolerance: float = 0.05                  # farthest reward still paired with a frame
    reward_match: str = 'before'                    # 'before' the frame or 'nearest' to it
    gap_factor: float = 1.5                         # split where the period exceeds this x median
    max_gap: float = 1.0                            # split where the period exceeds this, always
    min_length: int = 2                             # drop shorter episodes (frames)
    val_fraction: float = 0.1                       # share of episodes held out for validation
    seed: int = 0                                   # seed of the train/validation split

    def __post_init__(self):
        if isinstance(self.action_fields, str):
            self.action_fields = (self.action_fields,)
        self.action_fields = tuple(self.action_fields)
        if not self.action_fields or not all(isinstance(f, str) and f for f in self.action_fields):
            raise ValueError(f'action_fields must be non-empty field paths, got '
                             f'{self.action_fields!r}')
        if self.image_size < 1:
            raise ValueError(f'image_size must be positive, got {self.image_size}')
        for name in ('cmd_tolerance', 'reward_tolerance', 'max_gap'):
            if getattr(self, name) < 0:
                raise ValueError(f'{name} must be >= 0, got {getattr(self, name)}')
        if self.gap_factor <= 1.0:
            raise ValueError(f'gap_factor must be > 1, got {self.gap_factor}')
        if self.reward_match not in ('before', 'nearest'):
            raise ValueError(f"reward_match must be 'before' or 'nearest', got "
                             f'{self.reward_match!r}')
        if self.min_length < 1:
            raise ValueError(f'min_length must be >= 1, got {self.min_length}')
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f'val_fraction must be in [0, 1), got {self.val_fraction}')

    @classmethod
    def from_dict(cls, d: dict) -> 'DataConfig':
        return from_dict(cls, d, 'data parameters')

    def to_dict(self) -> dict:
        d = asdict(self)
        d['action_fields'] = list(self.action_fields)   # JSON/YAML friendly
        return d

    def content_dict(self) -> dict:
        """The fields that change what a bag turns into (not the split)."""
        d = self.to_dict()
        d.pop('val_fraction')
        d.pop('seed')
        return d


@dataclass
class Episode:
    """One uninterrupted run: ``actions[t]`` is a_{t-1}, the command that led to ``images[t]``."""

    images: np.ndarray     # (T, H, W, 3) uint8 RGB
    actions: np.ndarray    # (T, A) float32, actions[0] = 0
    rewards: np.ndarray    # (T,) float32
    stamps: np.ndarray     # (T,) int64 bag log times, ns
    source: str = ''       # bag path

    def __post_init__(self):
        t = len(self.images)
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise ValueError(f'images must be (T, H, W, 3) uint8, got {self.images.shape} '
                             f'{self.images.dtype}')
        if self.actions.ndim != 2 or (len(self.actions), len(self.rewards),
                                      len(self.stamps)) != (t, t, t):
            raise ValueError('images, actions (T, A), rewards and stamps must have the same T')
        for name in ('actions', 'rewards'):
            arr = getattr(self, name)
            bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
            if bad:
                raise ValueError(f'{self.source or "episode"}: {name} has {bad} non-finite '
                                 f'values (bad data must never enter an episode)')

    def __len__(self) -> int:
        return len(self.images)


# --- images ----------------------------------------------------------------------------------

# Encodings a camera frame may have: rosbags-image turns these into rgb8. Generic matrix types
# (8UC3, 16UC1, 32FC1, ...) are depth maps or raw data, not camera colour.
_GENERIC_ENCODING = re.compile(r'^\d+(U|S|F)C\d*$')
MAX_IMAGE_BYTES = 256 * 2**20        # 8K RGB16 is 200 MB; beyond this a header is corrupt


def _image_layout(msg) -> tuple[int, int]:
    """(packed row bytes, step) of a raw Image, or ValueError naming what is wrong with it."""
    enc = msg.encoding
    if not enc:
        raise ValueError('empty encoding')
    if _GENERIC_ENCODING.match(enc):
        raise ValueError(f'encoding {enc!r} is not a camera image (depth or raw data); '
                         'expected rgb8, bgr8, mono8, rgba8, yuv422, bayer_* ...')
    try:
        _, _, typestr, nchan = to_cvtype(enc)
    except Exception:                   # rosbags raises its own error types here
        raise ValueError(f'unknown encoding {enc!r}') from None
    if msg.height <= 0 or msg.width <= 0:
        raise ValueError(f'empty image ({msg.width}x{msg.height})')
    row = msg.width * nchan * np.dtype(typestr).itemsize
    step = msg.step or row
    if step < row:
        raise ValueError(f'image step {msg.step} < {msg.width} px x {nchan} channels')
    if step * msg.height > MAX_IMAGE_BYTES:
        raise ValueError(f'image of {msg.width}x{msg.height} (step {step}) is implausibly large')
    have, need = len(msg.data), step * (msg.height - 1) + row
    if have < need:
        raise ValueError(f'image data has {have} bytes, {need} expected for {msg.width}x'
                         f'{msg.height} {enc} with step {step}')
    return row, step


def _without_row_padding(msg):
    """Image with ``step`` > width * pixel bytes (row padding) as a packed image."""
    row, step = _image_layout(msg)
    if step == row and len(msg.data) == row * msg.height:
        return msg
    data = np.frombuffer(msg.data, np.uint8)
    if step == row:
        data = data[:row * msg.height]
    else:
        data = np.lib.stride_tricks.as_strided(data, (msg.height, row), (step, 1))
    return SimpleNamespace(height=msg.height, width=msg.width, encoding=msg.encoding,
                           is_bigendian=msg.is_bigendian, step=row,
                           data=np.ascontiguousarray(data).reshape(-1))


def image_to_rgb(msg, image_size: Optional[int] = None) -> np.ndarray:
    """Image or CompressedImage message (rosbags or rclpy) -> (S, S, 3) uint8 RGB.

    Raises ValueError naming the problem for anything that is not a usable camera frame
    (empty or unknown encoding, depth/float data, 0x0, data shorter than step x height,
    undecodable compressed bytes): callers drop such a frame, they never die of it.
    """
    try:
        if hasattr(msg, 'format'):                      # CompressedImage
            if len(msg.data) == 0:
                raise ValueError(f'empty compressed image (format {msg.format!r})')
            img = compressed_image_to_cvimage(msg)      # as OpenCV decodes it: BGR(A) or gray
            if img is None or img.size == 0:
                raise ValueError(f'cannot decode compressed image (format {msg.format!r})')
            if img.ndim == 2:
                img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
            elif img.shape[2] == 4:
                img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
            else:
                img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        else:
            img = message_to_cvimage(_without_row_padding(msg), 'rgb8')
    except ValueError:
        raise
    except Exception as e:          # rosbags-image and OpenCV raise their own types
        what = f'format {msg.format!r}' if hasattr(msg, 'format') else \
            f'encoding {msg.encoding!r}'
        raise ValueError(f'cannot convert image ({what}): {type(e).__name__}: '
                         f'{str(e).splitlines()[0] if str(e) else ""}') from None
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f'encoding {getattr(msg, "encoding", "?")!r} did not convert to rgb8')
    if image_size and img.shape[:2] != (image_size, image_size):
        img = cv2.resize(img, (image_size, image_size), interpolation=cv2.INTER_AREA)
    return np.array(img, dtype=np.uint8, copy=True)     # own the pixels, not the message buffer


# --- reading bags ----------------------------------------------------------------------------

def _stamp_ns(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def _field(msg, path: str):
    obj = msg
    for part in path.split('.'):
        obj = getattr(obj, part)
    return obj


def _action(msg, msgtype: str, action_fields: Sequence[str]) -> list[float]:
    """Fields of a command; on TwistStamped 'linear.x' means 'twist.linear.x'."""
    out = []
    for name in action_fields:
        try:
            out.append(float(_field(msg, name)))
        except AttributeError:
            if not hasattr(msg, 'twist'):
                raise BagError(f'command type {msgtype} has no field {name!r}') from None
            try:
                out.append(float(_field(msg.twist, name)))
            except AttributeError:
                raise BagError(f'command type {msgtype} has no field {name!r}') from None
    return out


def _marker_stamp(msg) -> int:
    return _stamp_ns(msg.stamp if hasattr(msg, 'stamp') else msg.header.stamp)


def _storage_id(path: Path) -> Optional[str]:
    if path.is_file():
        return STORAGE_SUFFIXES.get(path.suffix)
    for p in sorted(path.iterdir()):
        if p.suffix in STORAGE_SUFFIXES:
            return STORAGE_SUFFIXES[p.suffix]
    return None


def _bag_location(path: Path) -> Path:
    """What AnyReader should open: the directory, or its lone storage file if metadata is lost."""
    if not path.exists():
        raise BagError(f'{path}: no such bag (expected a rosbag2 directory or .mcap/.db3 file)')
    if path.is_dir() and not (path / 'metadata.yaml').exists():
        files = [p for p in sorted(path.iterdir()) if p.suffix in STORAGE_SUFFIXES]
        if len(files) == 1:     # recording killed before metadata.yaml was written
            return files[0]
        raise BagError(f'{path}: not a rosbag2 bag (no metadata.yaml, {len(files)} storage files)')
    return path


class _Bag:
    """Open AnyReader on a bag; every reading error becomes a BagError that names the bag.

    A bag whose recording was killed in the middle of a write (an mcap cut off, a sqlite3
    database with a hot journal) is read up to its last complete chunk/commit, with a warning.
    """

    def __init__(self, path: PathLike):
        self.path = Path(path)
        self.reader = None
        self.recovered = None

    def __enter__(self) -> AnyReader:
        from world_model_ctrl.bag_writer import open_killed
        loc = _bag_location(self.path)
        typestore = get_typestore(Stores.ROS2_HUMBLE)
        try:
            self.reader = AnyReader([loc], default_typestore=typestore)
            self.reader.open()
        except Exception as err:
            self.reader = None
            try:
                self.recovered = open_killed(loc)
                if self.recovered is None:
                    raise _bag_error(self.path, err) from err
                self.reader = AnyReader([self.recovered.path], default_typestore=typestore)
                self.reader.open()
            except Exception:
                self.reader = None
                self._drop_recovered()
                raise _bag_error(self.path, err) from err
            log.warning('%s: %s', self.path, self.recovered.note)
        return self.reader

    def _drop_recovered(self):
        if self.recovered is not None:
            self.recovered.close()
            self.recovered = None

    def __exit__(self, exc_type, exc, tb):
        if self.reader is not None:
            try:
                self.reader.close()
            except Exception:       # closing a half-broken reader must not hide the real error
                pass
        self._drop_recovered()
        if exc is not None and not isinstance(exc, BagError) and isinstance(exc, Exception):
            raise _bag_error(self.path, exc) from exc
        return False


def _bag_error(path: Path, err: Exception) -> BagError:
    text = f'{path}: cannot read bag: {type(err).__name__}: {err}'
    if 'magic' in str(err) or 'malformed' in str(err) or 'not a database' in str(err):
        text += (' (truncated or corrupt; a recording that was killed can often be repaired with'
                 ' `ros2 bag reindex` or `mcap recover`)')
    return BagError(text)


def _topic_conns(reader: AnyReader) -> dict[str, list]:
    out: dict[str, list] = {}
    for c in reader.connections:
        out.setdefault(c.topic, []).append(c)
    return out


def _progress(iterable, total: int, desc: str, progress: Optional[bool]):
    show = total >= PROGRESS_MIN_MESSAGES if progress is None else progress
    return tqdm(iterable, total=total, desc=desc, unit='msg', disable=None if show else True,
                leave=False)


@dataclass
class _Streams:
    """Everything alignment needs from one bag, sorted by log time (ns)."""

    img_log: np.ndarray
    img_stamp: np.ndarray
    images: np.ndarray
    cmd_log: np.ndarray
    cmd: np.ndarray
    rew_log: np.ndarray
    rew: np.ndarray
    markers: np.ndarray
    img_ok: np.ndarray = None       # False for frames image_to_rgb could not convert
    faults: dict = None             # bad messages per topic: see _read_streams


def _topic_faults(cfg: DataConfig) -> dict:
    return {cfg.image_topic: {'malformed': 0, 'reasons': {}},
            cfg.reward_topic: {'nonfinite': 0}, cfg.cmd_topic: {'nonfinite': 0}}


def _read_streams(path: Path, cfg: DataConfig, progress: Optional[bool]) -> _Streams:
    """Every frame, reward, command and marker of one bag.

    Bad messages do not abort the bag: a frame that cannot be converted is kept as a black
    placeholder with ``img_ok`` False; NaN/inf rewards and commands are kept as they are (the
    frames paired with them are dropped in _episodes_from_streams). ``faults`` counts them:
    {image_topic: {'malformed': n, 'reasons': {reason: n}}, reward_topic: {'nonfinite': n},
    cmd_topic: {'nonfinite': n}}.
    """
    img_log, img_stamp, img_ok = [], [], []
    cmd_log, cmd, rew_log, rew, markers = [], [], [], [], []
    faults = _topic_faults(cfg)
    with _Bag(path) as reader:
        topics = _topic_conns(reader)
        needed = (cfg.image_topic, cfg.reward_topic, cfg.cmd_topic)
        missing = [t for t in needed if t not in topics]
        if missing:
            have = ', '.join(f'{t} [{c[0].msgtype}]' for t, c in sorted(topics.items()))
            raise BagError(f'{path}: topic(s) {", ".join(missing)} not in bag; it has: '
                           f'{have or "no topics"}')
        for c in topics[cfg.image_topic]:
            if c.msgtype not in IMAGE_TYPES:
                raise BagError(f'{path}: image topic {cfg.image_topic} has type {c.msgtype}, '
                               f'expected one of {IMAGE_TYPES}')
        conns = [c for t in (cfg.image_topic, cfg.reward_topic, cfg.cmd_topic, cfg.episode_topic)
                 for c in topics.get(t, [])]
        total = sum(c.msgcount for c in conns)
        # decoded frames go straight into one array: no list of frames to stack (a second copy)
        size = cfg.image_size
        images = np.empty((max(1, sum(c.msgcount for c in topics[cfg.image_topic])), size, size,
                           3), np.uint8)
        for conn, t, raw in _progress(reader.messages(connections=conns), total, path.name,
                                      progress):
            msg = reader.deserialize(raw, conn.msgtype)
            if conn.topic == cfg.image_topic:
                if len(img_log) == len(images):
                    images = np.concatenate([images, np.empty_like(images)])
                try:
                    images[len(img_log)] = image_to_rgb(msg, size)
                    img_ok.append(True)
                except Exception as err:    # one bad frame must not cost the whole bag
                    images[len(img_log)] = 0
                    img_ok.append(False)
                    text = str(err).splitlines()[0] if str(err) else type(err).__name__
                    bad = faults[conn.topic]
                    bad['malformed'] += 1
                    bad['reasons'][text] = bad['reasons'].get(text, 0) + 1
                img_log.append(t)
                img_stamp.append(_stamp_ns(msg.header.stamp))
            elif conn.topic == cfg.reward_topic:
                rew_log.append(t)
                rew.append(float(msg.data))
            elif conn.topic == cfg.cmd_topic:
                try:
                    cmd.append(_action(msg, conn.msgtype, cfg.action_fields))
                except BagError as err:
                    raise BagError(f'{path}: {err}') from None
                cmd_log.append(t)
            else:
                markers.append(_marker_stamp(msg))
    for name, n in ((cfg.image_topic, len(img_log)), (cfg.reward_topic, len(rew_log)),
                    (cfg.cmd_topic, len(cmd_log))):
        if n == 0:
            raise BagError(f'{path}: topic {name} has no messages')

    def by_time(t, *arrays):
        t = np.asarray(t, np.int64)
        if np.all(t[1:] >= t[:-1]):     # the usual case: no reordering copy of the images
            return [t, *arrays]
        order = np.argsort(t, kind='stable')
        return [t[order]] + [a[order] for a in arrays]

    img_log, img_stamp, images, img_ok = by_time(img_log, np.asarray(img_stamp, np.int64),
                                                 images[:len(img_log)], np.asarray(img_ok, bool))
    # float64 -> float32 can overflow to inf: count after the cast, as training will see it
    cmd = np.asarray(cmd, np.float64).reshape(len(cmd_log), -1)
    with np.errstate(over='ignore'):
        cmd32, rew32 = cmd.astype(np.float32), np.asarray(rew, np.float64).astype(np.float32)
    faults[cfg.cmd_topic]['nonfinite'] = int(np.sum(~np.isfinite(cmd32).all(axis=1)))
    faults[cfg.reward_topic]['nonfinite'] = int(np.sum(~np.isfinite(rew32)))
    cmd_log, cmd = by_time(cmd_log, cmd32)
    rew_log, rew = by_time(rew_log, rew32)
    return _Streams(img_log, img_stamp, images, cmd_log, cmd, rew_log, rew,
                    np.unique(np.asarray(markers, np.int64)), img_ok, faults)


# --- alignment -------------------------------------------------------------------------------

def _gaps(dt: np.ndarray, gap_factor: float, max_gap: float) -> np.ndarray:
    """Steps (ns) longer than ``gap_factor`` x the median step or ``max_gap`` seconds."""
    period = float(np.median(dt[dt > 0])) if np.any(dt > 0) else np.inf
    return (dt > gap_factor * period) | (dt > max_gap * 1e9)


def stamps_usable(stamp_ns: np.ndarray) -> bool:
    """False for header stamps a driver left constant (e.g. zero): they cannot order frames."""
    return len(stamp_ns) < 2 or float(np.mean(stamp_ns[1:] == stamp_ns[:-1])) < 0.5


def segment_frames(log_ns: np.ndarray, stamp_ns: np.ndarray, markers: np.ndarray,
                   gap_factor: float, max_gap: float,
                   valid: Optional[np.ndarray] = None) -> np.ndarray:
    """Episode label per frame (frames in log-time order), -1 for a dropped frame.

    Drops header-stamp duplicates and frames with ``valid`` False (their neighbours end up in
    different episodes); splits at markers, gaps and backwards stamps (module docstring).
    """
    n = len(log_ns)
    labels = np.full(n, -1, np.int64)
    if n == 0:
        return labels
    use_stamps = stamps_usable(stamp_ns)
    keep = np.ones(n, bool)
    if use_stamps:
        keep[1:] = stamp_ns[1:] != stamp_ns[:-1]
    idx = np.flatnonzero(keep)
    t, s = log_ns[idx], stamp_ns[idx]
    new = np.zeros(len(idx), bool)
    new[0] = True
    gap = _gaps(np.diff(t), gap_factor, max_gap)
    if use_stamps:
        # a lost frame shows in both clocks; late delivery or a lockstep simulator waiting for
        # its next command shows only in log time, and the frames are still consecutive
        gap &= _gaps(np.diff(s), gap_factor, max_gap)
        new[1:] |= s[1:] < s[:-1]
        if len(markers):
            passed = np.searchsorted(np.sort(markers), s, side='right')  # markers with stamp <= s
            new[1:] |= passed[1:] > passed[:-1]
    new[1:] |= gap
    ok = np.ones(len(idx), bool) if valid is None else np.asarray(valid, bool)[idx]
    new[1:] |= ~ok[:-1]                 # a dropped frame ends the episode before it
    lab = np.cumsum(new) - 1
    lab[~ok] = -1
    labels[idx] = lab
    return labels


def _nearest(times: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest entry of sorted ``times`` for each query, and its |distance|."""
    hi = np.clip(np.searchsorted(times, query), 0, len(times) - 1)    # first entry >= query
    lo = np.maximum(hi - 1, 0)
    j = np.where(np.abs(query - times[lo]) <= np.abs(times[hi] - query), lo, hi)
    return j, np.abs(times[j] - query)


def _episodes_from_streams(st: _Streams, cfg: DataConfig, source: str,
                           report: Optional[dict] = None) -> list[Episode]:
    n = len(st.img_log)
    # r_t: the reward logged at/before the frame, or the nearest one (module docstring)
    if cfg.reward_match == 'nearest':
        j, dist = _nearest(st.rew_log, st.img_log)
    else:
        j = np.searchsorted(st.rew_log, st.img_log, side='right') - 1
        dist = np.where(j >= 0, st.img_log - st.rew_log[np.maximum(j, 0)], np.iinfo(np.int64).max)
        j = np.maximum(j, 0)
    has_reward = dist <= round(cfg.reward_tolerance * 1e9)
    if not has_reward.any():
        raise BagError(f'{source}: no {cfg.reward_topic} message within {cfg.reward_tolerance} s '
                       f'of any of {n} frames (images log {st.img_log[0]}..{st.img_log[-1]} ns, '
                       f'rewards {st.rew_log[0]}..{st.rew_log[-1]} ns)')
    rewards = st.rew[j]
    # a_{t-1}: latest command strictly before the frame, within tolerance
    k = np.searchsorted(st.cmd_log, st.img_log, side='left') - 1
    fresh = (k >= 0) & (st.img_log - st.cmd_log[np.maximum(k, 0)]
                        <= round(cfg.cmd_tolerance * 1e9))
    actions = np.where(fresh[:, None], st.cmd[np.maximum(k, 0)], 0.0).astype(np.float32)

    if not stamps_usable(st.img_stamp):
        warnings.warn(f'{source}: header stamps on {cfg.image_topic} do not change; ignoring '
                      'them (no duplicate, marker or backwards-stamp rules)', stacklevel=3)
    # bad data is dropped like a frame without reward: it never enters an episode or a window
    bad_reward = has_reward & ~np.isfinite(rewards)
    bad_cmd = ~np.isfinite(actions).all(axis=1)
    bad_image = ~st.img_ok if st.img_ok is not None else np.zeros(n, bool)
    valid = has_reward & ~bad_reward & ~bad_cmd & ~bad_image
    labels = segment_frames(st.img_log, st.img_stamp, st.markers, cfg.gap_factor, cfg.max_gap,
                            valid=valid)
    episodes = []
    kept = np.flatnonzero(labels >= 0)
    images = st.images if len(kept) == n else st.images[kept]   # episodes are views of this
    ends = np.flatnonzero(np.diff(labels[kept])) + 1
    for a, b in zip([0, *ends], [*ends, len(kept)]):
        if b - a < cfg.min_length:
            continue
        idx = kept[a:b]
        act = actions[idx].copy()
        act[0] = 0.0                        # nothing led to an episode's first frame
        episodes.append(Episode(images=images[a:b], actions=act,
                                rewards=rewards[idx].astype(np.float32),
                                stamps=st.img_log[idx].astype(np.int64), source=source))
    dropped_dup = int(np.sum(st.img_stamp[1:] == st.img_stamp[:-1]))
    log.info('%s: %d frames -> %d episodes, %d frames kept (%d duplicate stamps, %d without '
             'reward, %d in episodes shorter than %d)', source, n, len(episodes),
             sum(len(x) for x in episodes), dropped_dup, int(np.sum(~has_reward)),
             int(np.sum(labels >= 0)) - sum(len(x) for x in episodes), cfg.min_length)
    faults = st.faults or _topic_faults(cfg)
    dropped = {'nonfinite_reward': int(bad_reward.sum()), 'nonfinite_command': int(bad_cmd.sum()),
               'malformed_image': int(bad_image.sum())}
    _warn_bad_data(source, faults, dropped)
    if report is not None:
        clock = st.img_stamp if stamps_usable(st.img_stamp) else st.img_log
        report.update({'topics': faults, 'frames_dropped': dropped,
                       'frame_interval_s': _frame_interval(clock, labels)})
    return episodes


def _frame_interval(clock_ns: np.ndarray, labels: np.ndarray) -> Optional[float]:
    """Median interval (s) between consecutive frames of one episode, by header stamp (the
    model's step: in a lockstep simulation sim time, not the wall-clock pace), else None."""
    same = (labels[1:] == labels[:-1]) & (labels[1:] >= 0)
    dt = np.diff(np.asarray(clock_ns, np.int64))[same]
    dt = dt[dt > 0]
    return round(float(np.median(dt)) / 1e9, 6) if len(dt) else None


def frame_interval(cache: 'EpisodeCache') -> Optional[float]:
    """The frame interval (s) a cache's episodes were recorded at (median over its bags, from
    their header stamps), else (in-memory episodes) the median step of their log times."""
    if cache.meta.get('frame_intervals'):
        return float(np.median(cache.meta['frame_intervals']))
    labels = np.repeat(np.arange(len(cache)), cache.lengths)
    return _frame_interval(cache.stamps, labels)


def _warn_bad_data(source: str, faults: dict, dropped: dict) -> None:
    """One logging warning per bag with bad messages, counted by topic."""
    parts = []
    for topic, f in faults.items():
        if f.get('nonfinite'):
            parts.append(f"{topic}: {f['nonfinite']} non-finite (NaN/inf) message(s)")
        if f.get('malformed'):
            why = ', '.join(f'"{r}" x{c}' for r, c in list(f['reasons'].items())[:5])
            parts.append(f"{topic}: {f['malformed']} malformed frame(s) ({why})")
    if parts:
        log.warning('%s: bad data: %s; frames dropped (never in an episode): %d with a '
                    'non-finite reward, %d with a non-finite command, %d malformed images',
                    source, '; '.join(parts), dropped['nonfinite_reward'],
                    dropped['nonfinite_command'], dropped['malformed_image'])


def bag_to_episodes(path: PathLike, cfg: Optional[DataConfig] = None,
                    progress: Optional[bool] = None, report: Optional[dict] = None
                    ) -> list[Episode]:
    """Read one bag into aligned episodes (rules in the module docstring); raises BagError.

    ``report``, if given, is filled with the bad data found: {'topics': {topic: {'nonfinite':
    n} or {'malformed': n, 'reasons': {reason: n}}}, 'frames_dropped': {'nonfinite_reward',
    'nonfinite_command', 'malformed_image'}}.
    """
    cfg = cfg or DataConfig()
    path = Path(path)
    return _episodes_from_streams(_read_streams(path, cfg, progress), cfg, str(path), report)


def _as_paths(paths) -> list[Path]:
    if isinstance(paths, (str, os.PathLike)):
        return [Path(paths)]
    return [Path(p) for p in paths]


def _has_bad_data(report: dict) -> bool:
    return any(f.get('nonfinite') or f.get('malformed') for f in report['topics'].values())


def _iter_bags(paths: list[Path], cfg: DataConfig, strict: bool,
               progress: Optional[bool] = None, bad_data: Optional[dict] = None,
               intervals: Optional[list] = None
               ) -> Iterator[tuple[Path, list[Episode]]]:
    """Episodes bag by bag; a broken bag is skipped with a warning unless it is all we have.

    ``bad_data``, if given, gets {bag path: report} for each bag with bad messages;
    ``intervals`` each bag's frame interval (s, _frame_interval).
    """
    errors = []
    for p in paths:
        report: dict = {}
        try:
            eps = bag_to_episodes(p, cfg, progress, report)
            if bad_data is not None and _has_bad_data(report):
                bad_data[str(p)] = report
            if intervals is not None and report.get('frame_interval_s'):
                intervals.append(report['frame_interval_s'])
        except BagError as err:
            if strict or len(paths) == 1:
                raise
            warnings.warn(f'skipping bag {p}: {err}', stacklevel=3)
            errors.append(str(err))
            continue
        yield p, eps
    if errors and len(errors) == len(paths):
        raise BagError('no readable bag:\n  ' + '\n  '.join(errors))


def load_episodes(paths: Union[PathLike, Iterable[PathLike]], cfg: Optional[DataConfig] = None,
                  strict: bool = False, progress: Optional[bool] = None) -> list[Episode]:
    """Episodes of many bags, in bag order; broken bags are skipped with a warning (module doc)."""
    cfg = cfg or DataConfig()
    paths = _as_paths(paths)
    if not paths:
        raise BagError('no bags given')
    episodes = [e for _, eps in _iter_bags(paths, cfg, strict, progress) for e in eps]
    if not episodes:
        raise BagError(f'no episodes of >= {cfg.min_length} frames in {[str(p) for p in paths]}')
    return episodes


def split_episodes(episodes: Sequence, val_fraction: float = 0.1,
                   seed: int = 0) -> tuple[list, list]:
    """Deterministic split by episode into (train, val), each in the original order.

    Works on any sequence (episodes, or ``range(len(cache))`` for cache indices). With two or
    more episodes and ``val_fraction > 0`` both sides get at least one.
    """
    n = len(episodes)
    n_val = int(round(val_fraction * n))
    if val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    else:
        n_val = 0
    val = set(np.random.default_rng(seed).permutation(n)[:n_val].tolist())
    return ([episodes[i] for i in range(n) if i not in val],
            [episodes[i] for i in range(n) if i in val])


# --- cache -----------------------------------------------------------------------------------

_NPY_HEADER = 128   # fixed .npy header size, so the shape can be rewritten once it is known


def _npy_header(shape: tuple, dtype) -> bytes:
    # np.lib.format needs the shape up front; writing our own fixed-size header lets frames be
    # appended bag by bag without holding them all in memory or copying the file at the end.
    d = {'descr': np.lib.format.dtype_to_descr(np.dtype(dtype)), 'fortran_order': False,
         'shape': tuple(int(x) for x in shape)}
    body = repr(d).encode('latin1')
    pad = _NPY_HEADER - 10 - len(body) - 1
    return (np.lib.format.magic(1, 0) + struct.pack('<H', _NPY_HEADER - 10) + body + b' ' * pad
            + b'\n')


class _NpyAppender:
    def __init__(self, path: Path, frame_shape: tuple, dtype=np.uint8):
        self.path, self.frame_shape, self.dtype, self.n = path, tuple(frame_shape), dtype, 0
        self.fh = open(path, 'wb')
        self.fh.write(_npy_header((0,) + self.frame_shape, dtype))

    def append(self, arr: np.ndarray):
        if tuple(arr.shape[1:]) != self.frame_shape or arr.dtype != self.dtype:
            raise ValueError(f'frames {arr.shape} {arr.dtype} do not match the cache '
                             f'{self.frame_shape} {np.dtype(self.dtype)}')
        self.fh.write(np.ascontiguousarray(arr).data)
        self.n += len(arr)

    def close(self):
        self.fh.seek(0)
        self.fh.write(_npy_header((self.n,) + self.frame_shape, self.dtype))
        self.fh.close()


def _bag_fingerprint(path: Path) -> list:
    path = path.resolve()
    files = sorted(path.rglob('*')) if path.is_dir() else [path]
    return [str(path)] + [[str(f.relative_to(path)) if path.is_dir() else f.name,
                           f.stat().st_size, f.stat().st_mtime_ns] for f in files if f.is_file()]


def _cache_key(parts) -> str:
    text = json.dumps([CACHE_VERSION, parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


class EpisodeCache:
    """Episodes concatenated on disk; ``images`` is memory-mapped (N, H, W, 3) uint8."""

    def __init__(self, path: PathLike):
        self.path = Path(path)
        self.meta = json.loads((self.path / 'meta.json').read_text())
        self._open()

    def _open(self):
        self.images = np.load(self.path / 'images.npy', mmap_mode='r')    # (N, H, W, 3)
        self.actions = np.load(self.path / 'actions.npy')                 # (N, A)
        self.rewards = np.load(self.path / 'rewards.npy')                 # (N,)
        self.stamps = np.load(self.path / 'stamps.npy')                   # (N,)
        self.offsets = np.load(self.path / 'offsets.npy')                 # (E + 1,)

    # mmaps must not be pickled as copies into DataLoader workers: reopen them instead.
    def __getstate__(self):
        return {'path': self.path, 'meta': self.meta}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._open()

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def num_frames(self) -> int:
        return int(self.offsets[-1])

    @property
    def sources(self) -> list[str]:
        return self.meta['sources']

    @property
    def config(self) -> Optional[dict]:
        return self.meta.get('config')

    def episode(self, i: int) -> Episode:
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return Episode(images=self.images[a:b], actions=self.actions[a:b],
                       rewards=self.rewards[a:b], stamps=self.stamps[a:b],
                       source=self.sources[i])


def _write_cache(tmp: Path, batches: Iterator[tuple[str, list[Episode]]],
                 frame_shape: Optional[tuple], meta: dict) -> None:
    tmp.mkdir(parents=True)
    images = None
    actions, rewards, stamps, lengths, sources, bags = [], [], [], [], [], []
    try:
        for bag, eps in batches:        # one bag's episodes in memory at a time
            bags.append(bag)
            for ep in eps:
                if images is None:
                    images = _NpyAppender(tmp / 'images.npy', frame_shape or ep.images.shape[1:])
                images.append(ep.images)
                actions.append(np.asarray(ep.actions, np.float32))
                rewards.append(np.asarray(ep.rewards, np.float32))
                stamps.append(np.asarray(ep.stamps, np.int64))
                lengths.append(len(ep))
                sources.append(ep.source)
    except BaseException:
        if images is not None:
            images.fh.close()
        raise
    if images is None:
        raise BagError(f'no episodes to cache from {bags} (all shorter than min_length?)')
    images.close()
    if len({a.shape[1] for a in actions}) != 1:
        raise ValueError('episodes have different action sizes')
    np.save(tmp / 'actions.npy', np.concatenate(actions))
    np.save(tmp / 'rewards.npy', np.concatenate(rewards))
    np.save(tmp / 'stamps.npy', np.concatenate(stamps))
    np.save(tmp / 'offsets.npy', np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
    meta = dict(meta, sources=sources, bags=bags, frames=int(sum(lengths)))
    (tmp / 'meta.json').write_text(json.dumps(meta, indent=1))   # written last: marks complete


def build_cache(source: Union[PathLike, Sequence[PathLike], Sequence[Episode]],
                cache_dir: PathLike, cfg: Optional[DataConfig] = None, strict: bool = False,
                progress: Optional[bool] = None) -> EpisodeCache:
    """Cache bags (read one at a time) or in-memory episodes under ``cache_dir``; reuse if there.

    The cache key hashes the bag paths, file sizes and mtimes and the data-relevant config (or,
    for episodes, their contents), so editing a bag or the config builds a new cache.
    """
    cfg = cfg or DataConfig()
    cache_dir = Path(cache_dir)
    is_eps = not isinstance(source, (str, os.PathLike)) and len(source) > 0 \
        and all(isinstance(e, Episode) for e in source)
    if is_eps:
        h = hashlib.sha256()
        for e in source:
            h.update(e.source.encode())
            for arr in (e.images, e.actions, e.rewards, e.stamps):
                h.update(str((arr.shape, arr.dtype)).encode())
                h.update(np.ascontiguousarray(arr).data)
        key = _cache_key(['episodes', h.hexdigest()])
        batches = iter([('<memory>', list(source))])
        frame_shape = None
        meta = {'key': key, 'config': None}
    else:
        paths = _as_paths(source)
        if not paths:
            raise BagError('no bags given')
        fps = [_bag_fingerprint(p) if p.exists() else [str(p), 'missing'] for p in paths]
        key = _cache_key(['bags', fps, cfg.content_dict()])
        # both filled while the batches are read, before meta.json is written
        bad_data: dict = {}
        intervals: list = []
        batches = ((str(p), eps) for p, eps in _iter_bags(paths, cfg, strict, progress,
                                                           bad_data, intervals))
        frame_shape = (cfg.image_size, cfg.image_size, 3)
        meta = {'key': key, 'config': cfg.to_dict(), 'bad_data': bad_data,
                'frame_intervals': intervals}
    final = cache_dir / f'episodes-{key}'
    if (final / 'meta.json').exists():
        log.info('reusing dataset cache %s', final)
        return EpisodeCache(final)
    tmp = cache_dir / f'.tmp-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}'
    try:
        _write_cache(tmp, batches, frame_shape, meta)
        try:
            os.rename(tmp, final)       # atomic: concurrent builders (torchrun ranks) agree
        except OSError:
            if not (final / 'meta.json').exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info('wrote dataset cache %s', final)
    return EpisodeCache(final)


def _sequence_dataset_class():
    # torch takes seconds to import; `wmc bag-info` and other bag-only users should not pay it.
    import torch.utils.data

    class SequenceDataset(torch.utils.data.Dataset):
        """All windows of ``seq_len`` frames inside the chosen episodes (never across two).

        Items: ``images`` uint8 (L, H, W, 3), ``actions`` float32 (L, A) and ``rewards`` float32
        (L,). ``actions[0]`` is the episode's action at that index: zero only at a true episode
        start. A torch ``Dataset``, built on first access so bag-only users never import torch.
        """

        def __init__(self, cache: EpisodeCache, seq_len: int,
                     episodes_idx: Optional[Sequence[int]] = None, stride: int = 1):
            if seq_len < 1 or stride < 1:
                raise ValueError(f'seq_len and stride must be >= 1, got {seq_len}, {stride}')
            self.cache, self.seq_len = cache, seq_len
            idx = range(len(cache)) if episodes_idx is None else episodes_idx
            self.episodes_idx = [int(i) for i in idx]
            starts = [np.arange(cache.offsets[i], cache.offsets[i + 1] - seq_len + 1, stride)
                      for i in self.episodes_idx]
            self.starts = (np.concatenate(starts).astype(np.int64) if starts
                           else np.zeros(0, np.int64))
            if len(self.starts) == 0 and self.episodes_idx:
                longest = int(max(cache.lengths[self.episodes_idx]))
                raise ValueError(f'no window of {seq_len} frames: the longest of '
                                 f'{len(self.episodes_idx)} episodes has {longest}')

        def __len__(self) -> int:
            return len(self.starts)

        def __getitem__(self, i: int) -> dict:
            s = int(self.starts[i])
            e = s + self.seq_len
            return {'images': torch.from_numpy(np.array(self.cache.images[s:e])),  # (L, H, W, 3)
                    'actions': torch.from_numpy(self.cache.actions[s:e].copy()),    # (L, A)
                    'rewards': torch.from_numpy(self.cache.rewards[s:e].copy())}    # (L,)

    SequenceDataset.__qualname__ = 'SequenceDataset'     # picklable as data.SequenceDataset
    SequenceDataset.__module__ = __name__
    return SequenceDataset


def __getattr__(name: str):
    if name == 'SequenceDataset':
        globals()[name] = _sequence_dataset_class()
        return globals()[name]
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


# --- summary ---------------------------------------------------------------------------------

# Topic types whose float fields bag_summary checks for NaN/inf (a LaserScan's inf is legal).
NUMERIC_TYPES = ('std_msgs/msg/Float32', 'std_msgs/msg/Float64', 'geometry_msgs/msg/Twist',
                 'geometry_msgs/msg/TwistStamped', 'geometry_msgs/msg/Vector3',
                 'geometry_msgs/msg/Pose', 'geometry_msgs/msg/PoseStamped')


def _has_nonfinite(obj) -> bool:
    """True if any float field of a (nested) rosbags message is NaN or inf as float32 (what
    the dataset stores: a float64 command of 1e300 becomes inf)."""
    if isinstance(obj, float):
        with np.errstate(over='ignore'):
            return not np.isfinite(np.float32(obj))
    if isinstance(obj, np.ndarray):
        with np.errstate(over='ignore'):
            return obj.dtype.kind == 'f' and not np.isfinite(obj.astype(np.float32)).all()
    if isinstance(obj, (list, tuple)):
        return any(_has_nonfinite(x) for x in obj)
    fields = getattr(obj, '__dataclass_fields__', None)
    return bool(fields) and any(_has_nonfinite(getattr(obj, f)) for f in fields)


def bag_summary(path: PathLike, cfg: Optional[DataConfig] = None,
                progress: Optional[bool] = None) -> dict:
    """Plain-JSON facts about any bag: topics, counts, rates, image sizes/encodings, episodes.

    Bad data per topic: ``nonfinite`` (messages with a NaN/inf field) on NUMERIC_TYPES topics,
    ``malformed`` (frames image_to_rgb cannot convert) on image topics. Sizes of CompressedImage
    topics come from decoding their first message only; later ones are only checked for empty
    data.
    """
    cfg = cfg or DataConfig()
    path = Path(path)
    with _Bag(path) as reader:
        topics = _topic_conns(reader)
        times: dict[str, list[int]] = {t: [] for t in topics}
        images: dict[str, dict] = {}
        img_stamps: dict[str, list[int]] = {}
        markers: list[int] = []
        nonfinite: dict[str, int] = {}
        total = sum(c.msgcount for c in reader.connections)
        for conn, t, raw in _progress(reader.messages(), total, path.name, progress):
            times[conn.topic].append(t)
            if conn.msgtype in IMAGE_TYPES:
                msg = reader.deserialize(raw, conn.msgtype)
                info = images.setdefault(conn.topic, {'sizes': {}, 'encodings': {},
                                                      'malformed': 0})
                img_stamps.setdefault(conn.topic, []).append(_stamp_ns(msg.header.stamp))
                compressed = conn.msgtype.endswith('CompressedImage')
                enc = msg.format if compressed else msg.encoding
                info['encodings'][enc] = info['encodings'].get(enc, 0) + 1
                if compressed and info['sizes']:
                    info['malformed'] += len(msg.data) == 0
                    continue
                if compressed:
                    buf = np.frombuffer(msg.data, np.uint8)
                    decoded = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if buf.size else None
                    h, w = decoded.shape[:2] if decoded is not None else (0, 0)
                    info['malformed'] += decoded is None
                else:
                    h, w = msg.height, msg.width
                    try:
                        image_to_rgb(msg)
                    except Exception:
                        info['malformed'] += 1
                size = f'{w}x{h}'
                info['sizes'][size] = info['sizes'].get(size, 0) + 1
            elif conn.topic == cfg.episode_topic:
                markers.append(_marker_stamp(reader.deserialize(raw, conn.msgtype)))
            elif conn.msgtype in NUMERIC_TYPES:
                nonfinite[conn.topic] = nonfinite.get(conn.topic, 0) + _has_nonfinite(
                    reader.deserialize(raw, conn.msgtype))
        storage = _storage_id(_bag_location(path))
    all_t = [t for ts in times.values() for t in ts]
    count = len(all_t)
    start, end = (min(all_t), max(all_t)) if count else (None, None)
    out_topics = []
    for name in sorted(topics):
        ts = np.asarray(times[name], np.int64)
        span = (ts.max() - ts.min()) / 1e9 if len(ts) >= 2 else 0.0
        entry = {'name': name, 'type': topics[name][0].msgtype, 'count': int(len(ts)),
                 'rate_hz': float((len(ts) - 1) / span) if span > 0 else None}
        if name in nonfinite:
            entry['nonfinite'] = int(nonfinite[name])
        if name in images:
            entry['malformed'] = int(images[name]['malformed'])
        if name in images:
            info = images[name]
            top_size = max(info['sizes'], key=info['sizes'].get) if info['sizes'] else '0x0'
            w, h = (int(x) for x in top_size.split('x'))
            entry['image'] = {'width': w, 'height': h,
                              'encoding': max(info['encodings'], key=info['encodings'].get),
                              'sizes': info['sizes'], 'encodings': info['encodings']}
        out_topics.append(entry)
    # episodes: image-topic segments of >= min_length distinct frames, split at markers if the
    # bag has them, else at gaps
    topic = cfg.image_topic if cfg.image_topic in img_stamps else next(iter(img_stamps), None)
    if topic is None:
        episodes, source = len(set(markers)), 'markers' if markers else None
    else:
        ts = np.asarray(times[topic], np.int64)
        order = np.argsort(ts, kind='stable')
        gaps = (np.inf, np.inf) if markers else (cfg.gap_factor, cfg.max_gap)
        labels = segment_frames(ts[order], np.asarray(img_stamps[topic], np.int64)[order],
                                np.asarray(markers, np.int64), *gaps)
        sizes = np.bincount(labels[labels >= 0])
        episodes = int(np.sum(sizes >= cfg.min_length))
        source = 'markers' if markers else f'gaps on {topic}'
    return {'path': str(path), 'storage': storage, 'message_count': count,
            'start_ns': start, 'end_ns': end,
            'duration_s': (end - start) / 1e9 if count else 0.0,
            'topics': out_topics, 'episodes': episodes, 'episodes_from': source}
