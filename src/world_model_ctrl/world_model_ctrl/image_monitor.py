"""image_monitor node: score live frames with the DDPM prior; stop the planner on unusual ones.

At ``rate_hz`` the latest frame is scored (PriorModel.ood_score: a few fixed noise levels in one
batched pass). Publishes ``image_monitor/score`` and a DiagnosticStatus on ``/diagnostics``.
When the score stays above the checkpoint's calibrated threshold for ``hold_s`` seconds it sets
``planner/stop`` true (the planner then holds zero) until it stays below for ``release_s``.
``planner/stop`` is published on every tick, frames or not: it is the monitor's heartbeat, and a
planner started with ``require_monitor`` holds zero when it stops coming. A frame that cannot be
converted is dropped with a throttled warning.
"""
import time

import numpy as np
import torch
from rclpy.node import Node
from std_msgs.msg import Bool, Float32

from world_model_ctrl.camera import CameraSubscription, declare_camera_parameters
from world_model_ctrl.cem import resolve_device
from world_model_ctrl.data import image_to_rgb
from world_model_ctrl.diagnostics import ERROR, OK, WARN, Diagnostics
from world_model_ctrl.diffusion import PriorModel
from world_model_ctrl.paths import resolve_checkpoint
from world_model_ctrl.spin import require_positive, run_node
from world_model_ctrl.ssm import images_to_tensor


class ImageMonitorNode(Node):
    """camera/image_raw -> image_monitor/score, /diagnostics, planner/stop."""

    def __init__(self, **kwargs):
        super().__init__('image_monitor', **kwargs)
        self.declare_parameter('checkpoint', 'shipped')
        self.declare_parameter('device', 'cpu')
        self.declare_parameter('rate_hz', 2.0)
        self.declare_parameter('threshold', 0.0)     # 0 = the checkpoint's calibrated one
        self.declare_parameter('hold_s', 1.0)
        self.declare_parameter('release_s', 1.0)
        self.declare_parameter('threads', 1)
        declare_camera_parameters(self)       # compressed, image QoS: as belief
        p = self.get_parameter
        require_positive('rate_hz', p('rate_hz').value)
        for name in ('threshold', 'hold_s', 'release_s'):
            if not p(name).value >= 0:
                raise ValueError(f'parameter {name} must be >= 0, got {p(name).value}')
        torch.set_num_threads(max(1, p('threads').value))
        ckpt = resolve_checkpoint(p('checkpoint').value, 'prior.pt')
        self.device = resolve_device(p('device').value)
        self.model = PriorModel.from_checkpoint(ckpt, device=self.device)
        self.threshold = p('threshold').value or self.model.ood_threshold
        if not self.threshold:
            raise ValueError(f'{ckpt} has no calibrated OOD threshold: set the threshold '
                             'parameter or run `wmc eval-prior` on held-out bags')
        self.hold, self.release = p('hold_s').value, p('release_s').value
        self.frame = None
        self.above_since = self.below_since = None
        self.stopped = False
        self.pub_score = self.create_publisher(Float32, 'image_monitor/score', 10)
        self.pub_stop = self.create_publisher(Bool, 'planner/stop', 10)
        self.diag = Diagnostics(self, hardware_id='camera')
        self.camera = CameraSubscription(self, self.on_image)
        self.create_timer(1.0 / p('rate_hz').value, self.on_timer)
        self.get_logger().info(f'monitoring with {ckpt}, threshold {self.threshold:.4g}')

    def on_image(self, msg):
        self.frame = msg

    def on_timer(self):
        score = self.score_latest()
        if score is not None:
            self.update(score)
        self.pub_stop.publish(Bool(data=self.stopped))      # every tick: the heartbeat

    @torch.no_grad()
    def score_latest(self):
        """OOD score of the newest frame since the last tick, or None (none, or unusable)."""
        if self.frame is None:
            return None
        msg, self.frame = self.frame, None
        try:
            rgb = image_to_rgb(msg, self.model.config.image_size)
        except ValueError as e:
            self.get_logger().warning(f'dropping frame: {e}', throttle_duration_sec=5.0)
            return None
        x = images_to_tensor(rgb[None]).to(self.device)                   # (1, 3, S, S)
        score = float(self.model.ood_score(x)[0])
        if not np.isfinite(score):
            self.get_logger().warning('non-finite OOD score: treating the frame as unfamiliar',
                                      throttle_duration_sec=5.0)
            score = float('inf')
        return score

    def update(self, score: float):
        now = time.monotonic()
        if score > self.threshold:
            self.below_since = None
            self.above_since = self.above_since or now
            if not self.stopped and now - self.above_since >= self.hold:
                self.stopped = True
                self.get_logger().warning(f'unfamiliar camera frames (score {score:.3g} > '
                                          f'{self.threshold:.3g}): stopping the planner')
        else:
            self.above_since = None
            self.below_since = self.below_since or now
            if self.stopped and now - self.below_since >= self.release:
                self.stopped = False
                self.get_logger().info('frames look familiar again: releasing the planner')
        self.pub_score.publish(Float32(data=score))
        level = ERROR if self.stopped else WARN if score > self.threshold else OK
        self.diag.publish(level, 'planner stopped: unfamiliar frames' if self.stopped
                          else 'frames look familiar' if level == OK else 'unusual frame',
                          {'score': score, 'threshold': self.threshold})


def main(args=None):
    return run_node(ImageMonitorNode, args)


if __name__ == '__main__':
    raise SystemExit(main())
