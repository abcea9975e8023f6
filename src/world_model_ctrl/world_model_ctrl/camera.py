"""Camera input shared by belief and image_monitor: image_transport topic naming, and a warning
when no frames arrive that names the topic listened on and the image topics that do have a
publisher (the usual cause: a compressed camera, a remap, a namespace).
"""
from __future__ import annotations

import time

from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image

from world_model_ctrl.data import IMAGE_TYPES
NO_FRAMES_AFTER = 5.0       # s without a frame before the first warning
WARN_EVERY = 30.0           # s between warnings while it lasts


def subscribe_camera(node, callback, compressed: bool) -> str:
    """Subscribe ``camera/image_raw`` (remappable), or ``<that>/compressed`` with
    sensor_msgs/CompressedImage as image_transport names it; returns the topic."""
    base = node.resolve_topic_name('camera/image_raw')
    topic = f'{base}/compressed' if compressed else base
    node.create_subscription(CompressedImage if compressed else Image, topic, callback,
                             qos_profile_sensor_data)
    return topic


class FrameWatch:
    """Call ``frame()`` per frame; a timer on ``node`` warns while none has come for a while."""

    def __init__(self, node, topic: str, compressed: bool):
        self.node, self.topic, self.compressed = node, topic, compressed
        self.last = time.monotonic()    # counts from start-up
        self.warned = None
        node.create_timer(1.0, self.check)

    def frame(self) -> None:
        self.last = time.monotonic()

    def check(self) -> None:
        now = time.monotonic()
        if now - self.last < NO_FRAMES_AFTER or (
                self.warned is not None and now - self.warned < WARN_EVERY):
            return
        self.warned = now
        hints = self.alternatives()
        self.node.get_logger().warning(
            f'no camera frames on {self.topic} for {int(now - self.last)} s'
            + ('; ' + '; '.join(hints) if hints else '; no image topic has a publisher'))

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
