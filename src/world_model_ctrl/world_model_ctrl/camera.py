"""Camera input shared by belief and image_monitor: image_transport topic naming, a QoS that
matches the camera, the frame pacing of the belief node, and a warning when no frames arrive.

QoS. A best-effort subscription accepts every publisher, but Fast DDS loses most large frames
on it (640x480 bgr8 is 0.9 MB, past the 512 kB shared-memory segment of a default participant):
frames then go as UDP fragments and one lost fragment loses the frame. A reliable publisher
delivers them all to a reliable subscription, and a best-effort one delivers them all through
shared memory once the *publisher* runs with the shipped Fast DDS profile (config/fastdds.xml,
larger segments; `wmc up` and the launch file set it for the nodes they start). So with
``image_reliability: auto`` (default) the subscription follows the camera's publishers:
reliable when they all are, best effort otherwise (re-created when that changes). The share of
frames received is estimated from their stamps (``delivery``), with a warning below 80 % that
names the profile when large frames come from a best-effort publisher. ``image_depth`` 3: at
most three frames wait. One would lose frames a reliable link delivers in a burst (1280x720 at
30 Hz over UDP: 95 % instead of 100 %); three cannot become a lasting queue, as a frame the
belief skips costs microseconds (FramePacer), so it never works through seconds of old frames.
"""
from __future__ import annotations

import os
import time
from typing import Optional

from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy)
from sensor_msgs.msg import CompressedImage, Image

from world_model_ctrl.data import IMAGE_TYPES
from world_model_ctrl.messages import stamp_ns
NO_FRAMES_AFTER = 5.0       # s without a frame before the first warning
WARN_EVERY = 30.0           # s between warnings while it lasts
RELIABILITY = {'reliable': ReliabilityPolicy.RELIABLE,
               'best_effort': ReliabilityPolicy.BEST_EFFORT}
# Frames larger than a default Fast DDS shared-memory segment (512 kB) leave it.
LARGE_FRAME_BYTES = 512 * 1024
PROFILE_ENV = 'FASTDDS_DEFAULT_PROFILES_FILE'
STARTUP_DISCOVERY_S = 2.0   # auto: wait this long at start for the camera's publishers
OVERLAP_S = 2.0             # auto: the replaced subscription delivers this much longer
DELIVERY_WINDOW = 30        # frames per estimate of the share received (delivery_estimate)
DELIVERY_SECONDS = 3.0      # or this long, when fewer come


def fastdds_profile() -> str:
    """The shipped Fast DDS profile (config/fastdds.xml) of this package."""
    from world_model_ctrl.paths import config_file
    return str(config_file('fastdds.xml'))


def declare_camera_parameters(node) -> None:
    # subscribe <camera topic>/compressed (sensor_msgs/CompressedImage, jpeg or png)
    node.declare_parameter('compressed', False)
    node.declare_parameter('image_reliability', 'auto')    # auto | reliable | best_effort
    node.declare_parameter('image_depth', 3)


def delivery_estimate(stamps_ns: list[int]) -> float:
    """Share of a camera's frames that arrived, from the stamps of the ones that did: the
    camera's interval is the median of the gaps under 1.5 x the shortest (consecutive frames,
    with their jitter), so ``n`` frames spanning ``T`` should have been T / interval + 1.
    Gaps under 0.3 x the median are a driver catching up after a stall (two frames stamped
    a millisecond apart), not the camera's interval: they are left out."""
    s = sorted(stamps_ns)
    gaps = sorted(b - a for a, b in zip(s, s[1:]) if b > a)
    if len(gaps) < 2:
        return float('nan')
    gaps = [g for g in gaps if g >= 0.3 * gaps[len(gaps) // 2]]
    consecutive = [g for g in gaps if g < 1.5 * gaps[0]]
    interval = consecutive[len(consecutive) // 2]
    return min(1.0, len(s) / ((s[-1] - s[0]) / interval + 1))


class CameraSubscription:
    """``camera/image_raw`` (remappable), or ``<that>/compressed`` as image_transport names
    it, with the reliability of the parameters (module docstring). ``topic`` is the name."""

    def __init__(self, node, callback):
        p = node.get_parameter
        self.node, self.callback = node, callback
        self.compressed = bool(p('compressed').value)
        self.mode = p('image_reliability').value
        if self.mode not in ('auto', *RELIABILITY):
            raise ValueError(f"parameter image_reliability must be 'auto', 'reliable' or "
                             f"'best_effort', got {self.mode!r}")
        self.depth = p('image_depth').value
        if not self.depth >= 1:
            raise ValueError(f'parameter image_depth must be >= 1, got {self.depth}')
        base = node.resolve_topic_name('camera/image_raw')
        self.topic = f'{base}/compressed' if self.compressed else base
        self.msg_type = CompressedImage if self.compressed else Image
        self.sub = None
        self.reliability = None
        self.stamps: list[int] = []
        self.window_start = 0.0
        self.last_size = 0
        self.delivery = float('nan')       # estimated share of the camera's frames received
        self.retiring = []                 # (subscription, when replaced): make before break
        want = RELIABILITY.get(self.mode)
        if want is None:
            # Discovery fills the graph in the background: a camera already running shows up
            # within a second or two, and then the first subscription is already the right one.
            deadline = time.monotonic() + STARTUP_DISCOVERY_S
            while want is None and time.monotonic() < deadline:
                want = self.publishers_reliability()
                if want is None:
                    time.sleep(0.05)
        self._subscribe(want or ReliabilityPolicy.BEST_EFFORT)
        if self.mode == 'auto':
            node.create_timer(1.0, self.match)

    def _subscribe(self, reliability) -> None:
        """A new subscription; the old one keeps delivering for OVERLAP_S (a frame on both is
        judged on its stamp like any other: the pacer never filters a stamp twice)."""
        if self.sub is not None:
            self.retiring.append((self.sub, time.monotonic()))
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=self.depth,
                         reliability=reliability, durability=DurabilityPolicy.VOLATILE)
        self.sub = self.node.create_subscription(self.msg_type, self.topic, self.on_msg, qos)
        self.reliability = reliability

    def publishers_reliability(self) -> Optional[ReliabilityPolicy]:
        """RELIABLE if every publisher of the topic is, BEST_EFFORT if any is not, None if
        there is none."""
        infos = self.node.get_publishers_info_by_topic(self.topic)
        if not infos:
            return None
        reliable = all(i.qos_profile.reliability == ReliabilityPolicy.RELIABLE for i in infos)
        return ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT

    def match(self) -> None:
        now = time.monotonic()
        for sub, since in list(self.retiring):
            if now - since > OVERLAP_S:
                self.node.destroy_subscription(sub)
                self.retiring.remove((sub, since))
        want = self.publishers_reliability()
        if want is None or want == self.reliability:
            return
        self.node.get_logger().info(
            f'camera publishers on {self.topic} are '
            f'{"reliable" if want == ReliabilityPolicy.RELIABLE else "best effort (some)"}: '
            f'subscribing {"reliable" if want == ReliabilityPolicy.RELIABLE else "best effort"}')
        self._subscribe(want)

    def on_msg(self, msg) -> None:
        self.last_size = len(msg.data)
        stamp = stamp_ns(msg.header.stamp)
        if stamp:
            self.stamps.append(stamp)
            now = time.monotonic()
            if len(self.stamps) == 1:
                self.window_start = now
            # every DELIVERY_WINDOW frames, or every few seconds when few come
            if len(self.stamps) >= DELIVERY_WINDOW or (
                    len(self.stamps) >= 3 and now - self.window_start >= DELIVERY_SECONDS):
                self.delivery = delivery_estimate(self.stamps)
                self.stamps.clear()
                if self.delivery < 0.8:
                    self.warn_loss()
        self.callback(msg)

    def transport_hint(self) -> str:
        """Why large frames may be lost, if the last one was large and came best effort."""
        if self.reliability != ReliabilityPolicy.BEST_EFFORT or \
                self.last_size <= LARGE_FRAME_BYTES:
            return ''
        return (f': {self.last_size // 1024} kB frames from a best-effort publisher; Fast DDS '
                f'loses most unless the camera driver runs with {PROFILE_ENV}='
                f'{fastdds_profile()} (or publishes reliable); see docs/control.md "Camera '
                f'transport"')

    def warn_loss(self) -> None:
        self.node.get_logger().warning(
            f'receiving about {self.delivery:.0%} of the frames on {self.topic} (judged by '
            f'their stamps){self.transport_hint()}', throttle_duration_sec=WARN_EVERY)


class FrameWatch:
    """Call ``frame()`` per frame; a timer on ``node`` warns while none has come for a while,
    and while they come at under half ``expected_hz`` (the model's rate), naming the likely
    cause."""

    def __init__(self, node, camera: 'CameraSubscription', expected_hz: Optional[float] = None):
        self.node, self.camera, self.expected_hz = node, camera, expected_hz
        self.topic, self.compressed = camera.topic, camera.compressed
        self.last = time.monotonic()    # counts from start-up
        self.warned = None
        self.hints = None
        self.count = 0
        self.window = (self.last, 0)    # (start, frames counted then) of the rate window
        self.slow_warned = None
        node.create_timer(1.0, self.check)

    def frame(self) -> None:
        self.last = time.monotonic()
        self.count += 1

    def check(self) -> None:
        now = time.monotonic()
        self.check_rate(now)
        if now - self.last < NO_FRAMES_AFTER:
            self.hints = None
            return
        hints = self.own_publishers() + self.alternatives()
        # at most every WARN_EVERY s, unless what there is to say changed (a camera came up)
        if self.warned is not None and now - self.warned < WARN_EVERY and hints == self.hints:
            return
        self.warned, self.hints = now, hints
        self.node.get_logger().warning(
            f'no camera frames on {self.topic} for {int(now - self.last)} s'
            + ('; ' + '; '.join(hints) if hints else '; no image topic has a publisher'))

    def check_rate(self, now: float) -> None:
        t0, c0 = self.window
        if now - t0 < NO_FRAMES_AFTER:
            return
        self.window = (now, self.count)
        rate = (self.count - c0) / (now - t0)
        if not self.expected_hz or not 0 < rate < 0.5 * self.expected_hz or (
                self.slow_warned is not None and now - self.slow_warned < WARN_EVERY):
            return
        self.slow_warned = now
        self.node.get_logger().warning(
            f'camera frames on {self.topic} arrive at {rate:.1f} Hz, under half the model\'s '
            f'{self.expected_hz:g} Hz' + self.camera.transport_hint())

    def own_publishers(self) -> list[str]:
        """The topic listened on has publishers, yet nothing arrives: QoS or transport."""
        infos = self.node.get_publishers_info_by_topic(self.topic)
        if not infos:
            return []
        best_effort = sum(i.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT
                          for i in infos)
        return [f'{self.topic} has {len(infos)} publisher(s) ({best_effort} best effort) but no '
                f'frame arrives: frames over 512 kB from a best-effort camera need the camera '
                f'driver started with {PROFILE_ENV}={fastdds_profile()}; else check the QoS '
                f'(image_reliability)']

    def alternatives(self) -> list[str]:
        """What to set for each other image topic that has a publisher."""
        base = self.topic[:-len('/compressed')] if self.compressed else self.topic
        hints = []
        for name, types in sorted(self.node.get_topic_names_and_types()):
            if name == self.topic or not set(types) & set(IMAGE_TYPES):
                continue
            if name.rsplit('/', 1)[-1] == 'belief':     # beliefs (any node's) are 32FC1 images
                continue
            if self.node.count_publishers(name) == 0:
                continue
            if name == f'{base}/compressed':
                hints.append(f'{name} has a publisher: set compressed:=true')
            elif self.compressed and name == base:
                hints.append(f'{name} has a publisher: set compressed:=false')
            elif name.endswith('/compressed'):
                hints.append(f'{name} has a publisher: set compressed:=true and '
                             f'image_topic:={name[:-len("/compressed")]}')
            else:
                hints.append(f'{name} has a publisher: set image_topic:={name}')
        return hints


class FramePacer:
    """Which frames the belief filters when the camera is faster than the model's step.

    The model was trained on frames ``step_ns`` apart. ``wants(stamp_ns)`` is True for the frame
    nearest each due time (due times ``step_ns`` apart, counted by header stamp), False for the
    frames in between; a camera at or below the model's rate has every frame wanted. A wanted
    frame is only counted as taken by ``took(stamp_ns)``, once it proved usable (a malformed
    frame must not use up a step's slot and push out the good frame next to it). Nothing is
    queued: a frame not taken is dropped, and the next one is judged on its own stamp.
    A stamp that goes backwards (camera restarted, bag looped) or jumps ahead by more than a
    step starts the schedule again from that frame.
    """

    def __init__(self, step_ns: int, window: int = 9):
        self.step = int(step_ns)
        self.due: Optional[int] = None
        self.last: Optional[int] = None         # the previous frame's stamp (taken or not)
        self.intervals: list[int] = []          # recent camera frame intervals
        self.window = window
        self.restart = False                    # the wanted frame restarts the schedule
        self.taken: Optional[int] = None        # the stamp of the last frame taken

    def camera_interval(self) -> int:
        """Median of the recent camera frame intervals (0 until two frames came)."""
        if not self.intervals:
            return 0
        return sorted(self.intervals)[len(self.intervals) // 2]

    def wants(self, stamp_ns: int) -> bool:
        if stamp_ns == self.taken:
            return False        # the same frame again (e.g. on two subscriptions while they swap)
        if self.last is not None and stamp_ns > self.last:
            self.intervals = (self.intervals + [stamp_ns - self.last])[-self.window:]
        backwards = self.last is not None and stamp_ns < self.last
        self.last = stamp_ns
        if self.step <= 0:
            return True
        self.restart = self.due is None or backwards or stamp_ns > self.due + self.step // 2
        # else the frame nearest the due time: within half a camera interval of it
        return self.restart or stamp_ns >= self.due - self.camera_interval() // 2

    def took(self, stamp_ns: int) -> None:
        self.taken = stamp_ns
        if self.step > 0:
            self.due = stamp_ns + self.step if self.restart else self.due + self.step

    def take(self, stamp_ns: int) -> bool:
        """wants + took: for a frame that is certainly usable."""
        if self.wants(stamp_ns):
            self.took(stamp_ns)
            return True
        return False

    def reset(self) -> None:
        self.due = self.taken = None
