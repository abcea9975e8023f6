"""Optional debug images: what the belief decodes to, and what the planner imagines.

``belief/reconstruction`` is the decoder's picture of the posterior mean; ``planner/imagined``
is one row of the frames the transition's mean path predicts under the chosen plan. Both are
sensor_msgs/Image rgb8, so RViz and Foxglove show them as they are. Decoding costs CPU time
the control loop does not need, so a view is off unless asked for, published at most
``rate_hz`` times a second, and only after the message it illustrates went out.
"""
from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np
import torch
from rclpy.qos import QoSProfile
from sensor_msgs.msg import Image

from world_model_ctrl.diagnostics import OK, Diagnostics
from world_model_ctrl.spin import require_positive


def to_rgb8(x: torch.Tensor) -> np.ndarray:
    """Decoded pixel means (..., 3, S, S), nominally in [0, 1] -> uint8 (..., S, S, 3).

    The decoder's output is unbounded (and NaN after a diverged plan): clamp, never wrap."""
    x = torch.nan_to_num(x.detach().float(), nan=0.0).clamp(0.0, 1.0)
    return (x.movedim(-3, -1) * 255.0).round().to(torch.uint8).cpu().numpy()


def tile_row(frames: np.ndarray) -> np.ndarray:
    """(N, H, W, C) -> (H, N*W, C): the frames side by side, the first on the left."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[0] < 1:
        raise ValueError(f'tile_row wants frames (N, H, W, C) with N >= 1, got {frames.shape}')
    n, h, w, c = frames.shape
    return np.ascontiguousarray(frames.transpose(1, 0, 2, 3).reshape(h, n * w, c))


def rgb8_msg(rgb: np.ndarray, header) -> Image:
    """uint8 (H, W, 3) -> sensor_msgs/Image rgb8 with ``header``."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f'rgb8 wants uint8 (H, W, 3), got {rgb.dtype} {rgb.shape}')
    msg = Image(header=header, height=rgb.shape[0], width=rgb.shape[1], encoding='rgb8',
                is_bigendian=0, step=rgb.shape[1] * 3)
    msg.data = np.ascontiguousarray(rgb).tobytes()
    return msg


def _latent(model, z) -> torch.Tensor:
    device = next(model.parameters()).device
    return torch.as_tensor(z, dtype=torch.float32, device=device).reshape(1, -1)   # (1, Z)


@torch.no_grad()
def reconstruction(model, mean) -> np.ndarray:
    """The belief as a picture: p(x | z) pixel means at the posterior mean (Z,) -> (S, S, 3)."""
    return to_rgb8(model.decode(_latent(model, mean)))[0]


@torch.no_grad()
def imagined(model, mean, actions) -> np.ndarray:
    """The plan as pictures: frames 1..H along the transition's mean path from the belief mean
    (Z,) under ``actions`` (H, A), one row (S, H*S, 3). The mean path, not samples: the view
    shows what the model expects, not one draw of its noise."""
    z0 = _latent(model, mean)
    a = torch.as_tensor(actions, dtype=torch.float32, device=z0.device)
    z = model.imagine(z0, a.reshape(1, a.shape[-2], a.shape[-1]), sample=False)   # (1, H, Z)
    return tile_row(to_rgb8(model.decode(z[0])))                                   # (S, H*S, 3)


class ImageView:
    """One optional image topic: a publisher only when enabled, at most one image every
    1 / rate_hz seconds, and after each image a /diagnostics status of its own (named by the
    topic, e.g. ``world_model_ctrl: /belief/reconstruction``) with the cost of that image
    (render + publish, ms): the node's own status is left as it is.
    ``name`` is the stem of the node's parameters ``publish_<name>`` and ``<name>_rate_hz``.

    The limit is by wall time (monotonic), not ROS time: what it bounds is CPU time, which a
    paused or fast simulated clock does not change."""

    def __init__(self, node, topic: str, name: str, enabled: bool, rate_hz: float,
                 clock: Callable[[], float] = time.monotonic):
        require_positive(f'{name}_rate_hz', rate_hz)
        self.name = name
        self.enabled = bool(enabled)
        self.rate_hz = float(rate_hz)
        self.period = 1.0 / self.rate_hz
        self.clock = clock
        self.last = -math.inf
        self.ms = 0.0
        self.published = 0
        self.pub = self.diag = None
        if self.enabled:
            # Reliable, depth 1: matches reliable and best-effort viewers alike (RViz, Foxglove)
            # and keeps no backlog of old pictures.
            self.pub = node.create_publisher(Image, topic, QoSProfile(depth=1))
            resolved = node.resolve_topic_name(topic)
            self.diag = Diagnostics(node, hardware_id=resolved)
            self.diag.name = f'world_model_ctrl: {resolved}'    # not the node's own status
            node.get_logger().info(f'publishing {resolved} at most {rate_hz:g} Hz')

    def due(self) -> bool:
        return self.enabled and self.clock() - self.last >= self.period

    def publish(self, render: Callable[[], np.ndarray], header) -> bool:
        """``render()`` -> uint8 (H, W, 3) is called only when the view is on and due."""
        if not self.due():
            return False
        self.last = self.clock()
        t0 = time.perf_counter()
        self.pub.publish(rgb8_msg(render(), header))
        self.ms = (time.perf_counter() - t0) * 1e3
        self.published += 1
        self.diag.publish(OK, f'at most {self.rate_hz:g} Hz',
                          {f'{self.name}_ms': self.ms, f'{self.name}_published': self.published})
        return True
