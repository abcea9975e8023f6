"""The optional views belief/reconstruction and planner/imagined: the helpers, then the
nodes over real DDS (each node in its own process, isolated domain)."""
import subprocess
import time

import numpy as np
import pytest
import torch
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import Twist, TwistStamped
from rclpy.qos import QoSProfile, qos_profile_sensor_data
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from conftest import tiny_world_model
from faultkit import rgb_msg
from rosutil import spin_until
from room_sim.world import RoomWorld
from world_model_ctrl.messages import belief_to_msg
from world_model_ctrl.paths import resolve_checkpoint
from world_model_ctrl.procs import NodeGroup, NodeSpec, ros_env
from world_model_ctrl.ssm import WorldModel, images_to_tensor
from world_model_ctrl.views import (ImageView, imagined, reconstruction, rgb8_msg, tile_row,
                                    to_rgb8)


# Two robot positions in the shipped (overhead, 64x64) room; the goal is at the centre.
START_A, START_B = (0.5, 0.5), (1.5, 1.4)
CAMERA_HZ = 12.0


# -- helpers (no node process) -----------------------------------------------------------
def test_tile_row_puts_the_frames_side_by_side_in_order():
    frames = np.arange(4 * 3 * 5 * 3, dtype=np.uint8).reshape(4, 3, 5, 3)    # (N, H, W, C)
    row = tile_row(frames)
    assert row.shape == (3, 20, 3) and row.flags['C_CONTIGUOUS']
    for k in range(4):
        np.testing.assert_array_equal(row[:, 5 * k:5 * (k + 1)], frames[k])
    with pytest.raises(ValueError, match='N >= 1'):
        tile_row(frames[:0])
    with pytest.raises(ValueError, match='N, H, W, C'):
        tile_row(frames[0])


def test_to_rgb8_clamps_rounds_and_survives_nan():
    x = torch.tensor([-1.0, 0.0, 0.5, 1.0, 2.0, float('nan')]).view(1, 1, 6).expand(3, 1, 6)
    rgb = to_rgb8(x)                                                       # (3, S, S) -> (S, S, 3)
    assert rgb.shape == (1, 6, 3) and rgb.dtype == np.uint8
    assert rgb[0, :, 0].tolist() == [0, 0, 128, 255, 255, 0]


def test_rgb8_msg_layout():
    rgb = np.random.default_rng(0).integers(0, 256, (4, 7, 3), dtype=np.uint8)
    msg = rgb8_msg(rgb, Header(frame_id='cam'))
    assert (msg.encoding, msg.height, msg.width, msg.step) == ('rgb8', 4, 7, 21)
    assert msg.header.frame_id == 'cam' and bytes(msg.data) == rgb.tobytes()
    with pytest.raises(ValueError, match='uint8'):
        rgb8_msg(rgb.astype(np.float32), Header())


def test_reconstruction_and_imagined_decode_the_mean_path():
    model = tiny_world_model().eval()
    S, Z, A, H = model.config.image_size, model.config.latent_dim, model.config.action_dim, 5
    mean = torch.randn(Z)
    actions = torch.rand(H, A) - 0.5
    rec = reconstruction(model, mean)
    assert rec.shape == (S, S, 3) and rec.dtype == np.uint8
    with torch.no_grad():
        np.testing.assert_array_equal(rec, to_rgb8(model.decode(mean[None]))[0])
        z = model.imagine(mean[None], actions[None], sample=False)[0]          # (H, Z)
        want = to_rgb8(model.decode(z))                                        # (H, S, S, 3)
    row = imagined(model, mean.numpy(), actions.numpy())                       # numpy in is fine
    assert row.shape == (S, H * S, 3)
    np.testing.assert_array_equal(row, tile_row(want))
    assert not np.array_equal(row[:, :S], row[:, -S:])     # the frames follow the plan


def test_view_rate_must_be_positive():
    for bad in (0.0, -1.0, float('nan')):
        with pytest.raises(ValueError, match='imagined_rate_hz must be > 0'):
            ImageView(None, 'planner/imagined', 'imagined', False, bad)


def test_view_rate_limit_by_clock(ros_node):
    now = [100.0]
    view = ImageView(ros_node, 'v', 'v', True, 2.0, clock=lambda: now[0])
    renders = []

    def render():
        renders.append(now[0])
        return np.zeros((2, 2, 3), np.uint8)
    for k in range(20):                             # frames at 10 Hz for 2 s
        now[0] = 100.0 + k / 10
        view.publish(render, Header())
    # one image per 0.5 s, and nothing rendered in between
    assert renders == [100.0, 100.5, 101.0, 101.5]
    assert view.published == 4 and view.ms > 0
    off = ImageView(ros_node, 'w', 'w', False, 2.0)
    assert not off.publish(render, Header()) and len(renders) == 4 and off.published == 0
    assert ros_node.count_publishers('w') == 0 and off.diag is None


# -- nodes over DDS --------------------------------------------------------------------------
def room_frame(start):
    return RoomWorld(seed=0).reset(start=start)     # (64, 64, 3) uint8, goal at the centre


def robot_px(rgb):
    """(column, row) centre of the white robot: the only near-white thing in the room (the
    goal is red, the floor and walls are dark or grey)."""
    w = np.clip(rgb.min(-1).astype(np.float64) - 120.0, 0.0, None)
    assert w.sum() > 0, 'no robot in the picture'
    rows, cols = np.mgrid[:rgb.shape[0], :rgb.shape[1]]
    return np.array([(cols * w).sum(), (rows * w).sum()]) / w.sum()


def as_rgb(msg):
    return np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.width, 3)


def stamp_ns(header):
    return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec


def recorder(node, msg_type, topic):
    """[(msg, time its publisher sent it)]: DDS source timestamps, so a busy test process
    cannot make the node's rate look different."""
    got = []
    node.create_subscription(msg_type, topic, lambda m, info: got.append(
        (m, info['source_timestamp'] / 1e9)), QoSProfile(depth=100))
    return got


def spin_for(node, seconds):
    end = time.monotonic() + seconds
    spin_until(node, lambda: time.monotonic() > end, seconds + 5)


def assert_rate(got, rate_hz, t0, t1, what):
    """At most one image per 1/rate_hz s, and not far below it either."""
    n = sum(t0 <= sent <= t1 for _, sent in got)
    bound = rate_hz * (t1 - t0) + 1
    assert 0.5 * rate_hz * (t1 - t0) <= n <= bound, f'{n} {what} in {t1 - t0:.1f} s'


def test_views_are_off_by_default(ros_node, tiny_ssm_ckpt):
    topics = ('belief/reconstruction', 'planner/imagined')
    views = {t: recorder(ros_node, Image, t) for t in topics}
    beliefs, cmds = [], []
    ros_node.create_subscription(Image, 'belief', beliefs.append, QoSProfile(depth=100))
    ros_node.create_subscription(Twist, 'cmd_vel', cmds.append, QoSProfile(depth=100))
    cam = ros_node.create_publisher(Image, 'camera/image_raw', qos_profile_sensor_data)
    frame = room_frame(START_A)
    ros_node.create_timer(1 / CAMERA_HZ, lambda: cam.publish(rgb_msg(frame, time.time_ns())))
    small = {'checkpoint': str(tiny_ssm_ckpt)}
    with NodeGroup() as group:
        group.start(NodeSpec('world_model_ctrl.belief', small))
        group.start(NodeSpec('world_model_ctrl.planner', {
            **small, 'candidates': 20, 'top_k': 4, 'iterations': 1, 'horizon': 4}))
        spin_until(ros_node, lambda: len(beliefs) > 10 and len(cmds) > 10, 60,
                   'beliefs and plans from both nodes')
        spin_for(ros_node, 1.0)
        for t in topics:
            assert ros_node.count_publishers(t) == 0, f'{t} has a publisher'
    assert all(not got for got in views.values())


def test_reconstruction_shows_each_frame_at_most_at_its_rate(ros_node):
    frames = {'A': room_frame(START_A), 'B': room_frame(START_B)}
    moved = np.any(frames['A'] != frames['B'], -1)  # the two robot patches
    sent = {}                                       # stamp (ns) -> which frame
    shown = {'now': 'A'}
    recons = recorder(ros_node, Image, 'belief/reconstruction')
    diags = []                      # the view's own status, after each image
    ros_node.create_subscription(DiagnosticArray, '/diagnostics', lambda m: diags.extend(
        {v.key: v.value for v in s.values} for s in m.status
        if s.name == 'world_model_ctrl: /belief/reconstruction'), 10)
    cam = ros_node.create_publisher(Image, 'camera/image_raw', qos_profile_sensor_data)

    def camera():
        stamp = time.time_ns()
        msg = rgb_msg(frames[shown['now']], stamp)
        msg.header.frame_id = 'camera_optical'
        sent[stamp] = shown['now']
        cam.publish(msg)
    ros_node.create_timer(1 / CAMERA_HZ, camera)
    with NodeGroup() as group:
        group.start(NodeSpec('world_model_ctrl.belief', {
            'publish_reconstruction': True, 'reconstruction_rate_hz': 2.0}))  # shipped model
        spin_until(ros_node, lambda: recons, 60, 'a first reconstruction')
        t0 = time.time()
        spin_for(ros_node, 3.0)
        shown['now'] = 'B'                          # the robot is somewhere else now
        spin_for(ros_node, 3.0)
        t1 = time.time()
        spin_until(ros_node, lambda: any('reconstruction_ms' in d for d in diags), 5,
                   'the decode cost on /diagnostics')
    assert_rate(recons, 2.0, t0, t1, 'reconstructions at 2 Hz from 12 Hz frames')
    seen = set()
    for msg, _ in recons:
        assert (msg.encoding, msg.height, msg.width, msg.step) == ('rgb8', 64, 64, 192)
        assert msg.header.frame_id == 'camera_optical'
        assert stamp_ns(msg.header) in sent         # the header is that of a frame sent
        which = sent[stamp_ns(msg.header)]
        other = 'B' if which == 'A' else 'A'
        seen.add(which)
        rec, frame = as_rgb(msg).astype(float), frames[which].astype(float)
        # Close to its own frame everywhere (a constant grey image is ~80 off), and where the
        # robot was or is, far closer to it than to the other frame (the wrong frame is as
        # close to it as to itself elsewhere).
        assert np.abs(rec - frame).mean() < 5.0
        own = np.abs(rec - frame)[moved].mean()
        wrong = np.abs(rec - frames[other])[moved].mean()
        assert own < 0.3 * wrong, f'reconstruction of {which}: {own:.1f} vs {wrong:.1f}'
    assert seen == {'A', 'B'}
    cost = [float(d['reconstruction_ms']) for d in diags if 'reconstruction_ms' in d]
    assert 0 < cost[-1] < 1000 and int(diags[-1]['reconstruction_published']) >= 1
    print(f'reconstruction cost on /diagnostics: {cost[-1]:.2f} ms')


def test_imagined_shows_the_plan_after_its_command_at_most_at_its_rate(ros_node):
    model = WorldModel.from_checkpoint(resolve_checkpoint('shipped', 'ssm.pt'))
    frame = room_frame(START_A)
    with torch.no_grad():
        _, mean, std = model.step(None, images_to_tensor(frame[None]), torch.zeros(1, 2))
    mean, std = mean[0].numpy(), std[0].numpy()
    sent = set()
    images = recorder(ros_node, Image, 'planner/imagined')
    answers = recorder(ros_node, TwistStamped, 'planner/answered')   # right after each cmd_vel
    pub = ros_node.create_publisher(Image, 'belief', 10)

    def belief():
        stamp = time.time_ns()
        header = Header(frame_id='camera_optical')
        header.stamp.sec, header.stamp.nanosec = divmod(stamp, 1_000_000_000)
        sent.add(stamp)
        pub.publish(belief_to_msg(mean, std, header))
    ros_node.create_timer(1 / CAMERA_HZ, belief)
    H = 8
    with NodeGroup() as group:
        group.start(NodeSpec('world_model_ctrl.planner', {       # shipped model, 10 Hz timer
            'publish_imagined': True, 'imagined_rate_hz': 2.0, 'horizon': H}))
        spin_until(ros_node, lambda: images, 60, 'a first imagined plan')
        t0 = time.time()
        spin_for(ros_node, 5.0)
        t1 = time.time()
    assert_rate(images, 2.0, t0, t1, 'imagined plans at 2 Hz from 10 Hz plans')
    answered = {}                   # belief stamp -> first command answering it (a timer
    for c, at in answers:           # planner may answer one belief twice)
        answered.setdefault(stamp_ns(c.header), at)
    goal = RoomWorld(seed=0).to_pixels(RoomWorld(seed=0).goal)
    for msg, at in images:
        assert (msg.encoding, msg.height, msg.width, msg.step) == ('rgb8', 64, H * 64, H * 192)
        assert msg.header.frame_id == 'camera_optical'
        stamp = stamp_ns(msg.header)
        assert stamp in sent                        # the answered belief's header
        assert answered[stamp] <= at, 'the picture went out before the command it shows'
        tiles = as_rgb(msg).reshape(64, H, 64, 3).transpose(1, 0, 2, 3)    # (H, S, S, 3)
        first, last = robot_px(tiles[0]), robot_px(tiles[-1])
        # one step from where the frame shows the robot (at most 1.6 px per step) ...
        assert np.linalg.norm(first - robot_px(frame)) < 3.0
        # ... and the plan drives it towards the goal (the shipped model's reward): measured
        # 6.7-14 px closer after 8 steps; under zero actions the model drifts 2.4 px
        assert np.linalg.norm(last - goal) < np.linalg.norm(first - goal) - 5.0


@pytest.mark.parametrize('module, param', [('world_model_ctrl.belief', 'reconstruction_rate_hz'),
                                           ('world_model_ctrl.planner', 'imagined_rate_hz')])
def test_a_view_rate_of_zero_is_refused_at_start(ros_domain, tiny_ssm_ckpt, module, param):
    argv = NodeSpec(module, {'checkpoint': str(tiny_ssm_ckpt), param: 0.0}).argv()
    proc = subprocess.run(argv, env=ros_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert f'parameter {param} must be > 0, got 0.0' in proc.stderr
    assert 'Traceback' not in proc.stderr
