"""belief node: filter the latent state q(z_t | x_{1:t}, a_{1:t-1}) from the live camera.

Each frame: convert (any encoding/size) -> one WorldModel.step with the last command sent ->
publish mean/std (messages.belief_to_msg) stamped with the frame's header, and the time taken.
The model steps at the frame interval it was trained on (``frame_interval_s`` in the
checkpoint): a faster camera has the frame nearest each step filtered and the others skipped
(camera.FramePacer, by header stamp), so the model is neither stepped at the wrong rate nor
the CPU spent on frames the planner never uses; a camera at or below the model's rate has every
frame filtered. The camera subscription keeps only the newest frame (camera.py: QoS).
Bad input never stops it: a frame that is not a usable camera image is dropped, a non-finite
command is ignored (the last finite one stays), and a filter state that turns non-finite is
reset without publishing; each with a throttled warning naming the reason.
"""
import time

import numpy as np
import torch
from geometry_msgs.msg import Twist, TwistStamped
from rclpy.node import Node
from sensor_msgs.msg import Image
from std_msgs.msg import Float32, Header

from world_model_ctrl.actions import check_fields, trained_spec
from world_model_ctrl.camera import (NO_FRAMES_AFTER, CameraSubscription, FramePacer, FrameWatch,
                                     declare_camera_parameters)
from world_model_ctrl.data import image_to_rgb
from world_model_ctrl.diagnostics import OK, WARN, Diagnostics
from world_model_ctrl.messages import (action_from_cmd, belief_to_msg, check_action_fields,
                                       stamp_ns)
from world_model_ctrl.paths import resolve_checkpoint
from world_model_ctrl.spin import require_positive, run_node
from world_model_ctrl.ssm import WorldModel, images_to_tensor
from world_model_ctrl.worlds import get_world
from world_model_ctrl.cem import resolve_device
from world_model_ctrl.views import ImageView, reconstruction


class BeliefNode(Node):
    """camera/image_raw + cmd_vel -> belief (2 x Z float image), belief/processing_ms."""

    def __init__(self, **kwargs):
        super().__init__('belief', **kwargs)
        self.declare_parameter('checkpoint', 'shipped')
        self.declare_parameter('world', 'overhead')   # whose model 'shipped' means
        self.declare_parameter('device', 'cpu')
        declare_camera_parameters(self)
        self.declare_parameter('cmd_vel_stamped', False)
        self.declare_parameter('action_fields', ['linear.x', 'linear.y'])
        self.declare_parameter('threads', 1)
        # Lockstep sims: every frame is caused by exactly one command, which may reach this
        # node just after the frame; hold the frame until it arrives (at most cmd_sync_timeout).
        self.declare_parameter('cmd_sync', False)
        self.declare_parameter('cmd_sync_timeout', 0.05)
        # With cmd_sync: take the commands from this TwistStamped topic, each stamped with the
        # frame it answers (the planner's planner/answered, what room_sim steps on with its
        # answer_topic), and pair frame t with the answer to frame t-1 by stamp. '' = cmd_vel,
        # paired by arrival (a late command for an older frame can then be taken for a newer).
        self.declare_parameter('answer_topic', '')
        # belief/reconstruction (rgb8): the decoded belief, for people to look at (views.py)
        self.declare_parameter('publish_reconstruction', False)
        self.declare_parameter('reconstruction_rate_hz', 2.0)
        p = self.get_parameter
        require_positive('cmd_sync_timeout', p('cmd_sync_timeout').value)
        torch.set_num_threads(max(1, p('threads').value))
        ckpt = resolve_checkpoint(p('checkpoint').value, get_world(p('world').value).checkpoint)
        self.device = resolve_device(p('device').value)
        self.model = WorldModel.from_checkpoint(ckpt, device=self.device)
        self.size = self.model.config.image_size
        self.fields = check_action_fields(p('action_fields').value, self.model.config.action_dim)
        check_fields(self.fields, trained_spec(self.model.checkpoint_extra), ckpt)
        self.h = None
        self.last_action = np.zeros(len(self.fields), np.float32)
        self.cmd_sync = p('cmd_sync').value
        self.sync_timeout = p('cmd_sync_timeout').value
        self.new_cmd = False        # a command arrived since the last filtered frame
        self.first = True           # next frame starts an episode: nothing caused it
        self.pending = None         # (frame msg, arrival time) waiting for its command
        self.last_stamp = None
        self.reset_at = None        # cmd_sync: stamp (ns) of the next episode's first frame
        self.last_belief = None
        self.pub = self.create_publisher(Image, 'belief', 10)
        self.pub_ms = self.create_publisher(Float32, 'belief/processing_ms', 10)
        self.view = ImageView(self, 'belief/reconstruction', 'reconstruction',
                              p('publish_reconstruction').value,
                              p('reconstruction_rate_hz').value)
        # Commands are subscribed before images: with both pending, rclpy takes them in
        # creation order, so a frame is filtered with the command that produced it.
        self.answer_topic = p('answer_topic').value if self.cmd_sync else ''
        if self.answer_topic:
            self.create_subscription(TwistStamped, self.answer_topic, self.on_cmd, 10)
        else:
            cmd_type = TwistStamped if p('cmd_vel_stamped').value else Twist
            self.create_subscription(cmd_type, 'cmd_vel', self.on_cmd, 10)
        self.create_subscription(Header, 'room_sim/episode_start', self.on_reset, 10)
        self.step_s = float(self.model.checkpoint_extra.get('frame_interval_s') or 0.0)
        if self.step_s <= 0 and not self.cmd_sync:
            self.get_logger().warning(f'{ckpt} does not record the frame interval it was '
                                      'trained on: filtering every frame')
        self.pacer = FramePacer(0 if self.cmd_sync else round(self.step_s * 1e9))
        self.camera = CameraSubscription(self, self.on_image)
        topic = self.camera.topic
        self.frames = FrameWatch(self, self.camera, 1 / self.step_s if self.step_s > 0 else None)
        # counted since start: what /diagnostics reports (every second). frames_skipped: taken
        # off the camera but not filtered, the camera being faster than the model's step.
        self.counts = dict.fromkeys(('frames_received', 'frames_filtered', 'frames_skipped',
                                     'frames_dropped', 'nonfinite_commands', 'state_resets',
                                     'commands_late'), 0)
        self.processing_ms = 0.0
        self.diag = Diagnostics(self, hardware_id=topic)
        self.create_timer(1.0, self.report)
        self.get_logger().info(f'belief from {ckpt} on {self.device}, camera {topic}')

        if self.cmd_sync:
            self.create_timer(self.sync_timeout / 2, self.flush_pending)

    def on_cmd(self, msg):
        if self.answer_topic and (msg.header.stamp.sec, msg.header.stamp.nanosec) \
                != self.last_stamp:
            return          # answers another frame (an older one, or the last episode's)
        action = action_from_cmd(msg, self.fields)
        if np.all(np.isfinite(action)):
            self.last_action = action
        else:
            self.counts['nonfinite_commands'] += 1
            self.get_logger().warning(f'ignoring non-finite command {action.tolist()}: keeping '
                                      f'{self.last_action.tolist()}', throttle_duration_sec=5.0)
        self.new_cmd = True
        if self.pending is not None:
            self.filter(self.pending[0])

    def on_reset(self, msg):
        if not self.cmd_sync:
            self.reset_state()
            return
        # Lockstep: the episode starts at the frame with this message's stamp. Frames of the
        # last episode may still be on their way (or held for their command): they are not
        # filtered into the new one, and the reset waits for the new episode's first frame.
        self.reset_at = stamp_ns(msg.stamp)
        if self.pending is not None:
            held, self.pending = self.pending[0], None
            if stamp_ns(held.header.stamp) >= self.reset_at:   # the first frame came first
                self.on_image(held, counted=True)

    def reset_state(self):
        self.h = None
        self.last_action[:] = 0.0
        self.first = True
        self.last_stamp = None
        self.pacer.reset()

    def on_image(self, msg, counted=False):
        if not counted:
            self.frames.frame()
            self.counts['frames_received'] += 1
        stamp = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        if self.reset_at is not None:              # cmd_sync only
            if stamp_ns(msg.header.stamp) < self.reset_at:
                self.counts['frames_skipped'] += 1  # the last episode's: its answer is moot
                return
            self.reset_at = None
            self.reset_state()
        if self.cmd_sync and stamp == self.last_stamp:
            # A lockstep sim re-sends a frame when its loop stalled: something downstream was
            # lost. Re-send the belief (filtering the same frame twice would be wrong). Only
            # there: a real camera may leave every stamp equal (e.g. zero).
            if self.last_belief is not None:
                self.pub.publish(self.last_belief)
            return
        if self.cmd_sync and not self.first and not self.new_cmd:
            self.pending = (msg, time.monotonic())
            return
        # cameras that leave the stamp at zero are paced by arrival time
        ns = stamp_ns(msg.header.stamp) or self.get_clock().now().nanoseconds
        if not self.pacer.wants(ns):
            self.counts['frames_skipped'] += 1
            return
        self.filter(msg, ns)

    def flush_pending(self):
        if self.pending is not None and time.monotonic() - self.pending[1] > self.sync_timeout:
            self.counts['commands_late'] += 1
            self.get_logger().warning(f'no command within cmd_sync_timeout '
                                      f'({self.sync_timeout} s) of a frame: filtering it with the '
                                      'last one', throttle_duration_sec=5.0)
            self.filter(self.pending[0])  # its command never came: use the last one

    @torch.no_grad()
    def filter(self, msg, pace_ns=None):
        self.pending = None
        t0 = time.perf_counter()
        try:
            rgb = image_to_rgb(msg, self.size)
        except ValueError as e:
            self.counts['frames_dropped'] += 1
            self.get_logger().warning(f'dropping frame: {e}', throttle_duration_sec=5.0)
            return
        if pace_ns is not None:
            self.pacer.took(pace_ns)
        if self.first:                    # nothing led to an episode's first frame
            self.last_action[:] = 0.0
        self.new_cmd = self.first = False
        self.last_stamp = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        x = images_to_tensor(rgb[None]).to(self.device)                      # (1, 3, S, S)
        a = torch.from_numpy(self.last_action[None]).to(self.device)         # (1, A)
        h, mean, std = self.model.step(self.h, x, a)
        if not all(bool(torch.isfinite(t).all()) for t in (h, mean, std)):
            self.get_logger().warning('filter state turned non-finite: resetting it (no belief '
                                      'for this frame)', throttle_duration_sec=5.0)
            self.counts['state_resets'] += 1
            self.reset_state()
            return
        self.h = h
        self.last_belief = belief_to_msg(mean[0].cpu().numpy(), std[0].cpu().numpy(),
                                         msg.header)
        self.pub.publish(self.last_belief)
        self.processing_ms = (time.perf_counter() - t0) * 1e3
        self.pub_ms.publish(Float32(data=self.processing_ms))
        self.counts['frames_filtered'] += 1
        self.view.publish(lambda: reconstruction(self.model, mean[0]), msg.header)

    def report(self):
        age = time.monotonic() - self.frames.last
        quiet = age >= NO_FRAMES_AFTER
        self.diag.publish(WARN if quiet else OK,
                          f'no camera frames for {int(age)} s' if quiet else 'filtering',
                          {**self.counts, 'processing_ms': self.processing_ms,
                           'last_frame_age_s': age, 'camera_topic': self.frames.topic,
                           'camera_interval_s': self.pacer.camera_interval() / 1e9,
                           'model_step_s': self.step_s,
                           'camera_qos': str(self.camera.reliability.name).lower(),
                           'camera_delivery': self.camera.delivery})


def main(args=None):
    return run_node(BeliefNode, args)


if __name__ == '__main__':
    raise SystemExit(main())
