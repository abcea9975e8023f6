"""The planner's goal_image objective over real DDS: zero until a goal exists; a goal set by
topic (raw and compressed, late-joining), by service and by file reaches the planner; bad goals
are refused with the goal unchanged; bad set-ups stop the node with one line."""
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
import torch
from geometry_msgs.msg import Twist
from rclpy.qos import QoSProfile
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header
from std_srvs.srv import Trigger

from conftest import ROOM_EXTRA, tiny_world_model, unique_domain
from faultkit import assert_clean_output
from rosutil import call, spin_until
from world_model_ctrl.goal import GoalHead, GoalHeadConfig
from world_model_ctrl.messages import belief_to_msg, latched_qos
from world_model_ctrl.procs import NodeGroup, NodeSpec, ros_env

LATCHED = latched_qos()


@pytest.fixture(scope='module')
def goal_ckpt(tmp_path_factory):
    """A tiny world model with a (random) goal head: plumbing, not quality (test_goal.py)."""
    model = tiny_world_model()
    torch.manual_seed(0)
    head = GoalHead(GoalHeadConfig(latent_dim=model.config.latent_dim, hidden=16, embed_dim=4))
    path = tmp_path_factory.mktemp('goal') / 'tiny_goal.pt'
    model.save(path, extra={**ROOM_EXTRA, 'goal_head': head.to_extra()})
    return path, model.config.latent_dim


def _rgb(seed, size=480):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)


def _image_msg(rgb, frame_id):
    h, w = rgb.shape[:2]
    msg = Image(height=h, width=w, encoding='rgb8', step=w * 3, data=rgb.tobytes())
    msg.header.frame_id = frame_id
    return msg


class Rig:
    """A probe beside one planner (objective goal_image, trigger timer at 20 Hz)."""

    def __init__(self, ros_node, group, ckpt, latent_dim, **params):
        self.node, self.z = ros_node, latent_dim
        self.cmds, self.goals = [], []
        ros_node.create_subscription(Twist, 'cmd_vel', self.cmds.append, QoSProfile(depth=1000))
        ros_node.create_subscription(Header, 'planner/goal_set', self.goals.append, LATCHED)
        self.beliefs = ros_node.create_publisher(Image, 'belief', 10)
        self.group = group
        self.proc = group.start(NodeSpec('world_model_ctrl.planner', {
            'checkpoint': str(ckpt), 'objective': 'goal_image', 'rate_hz': 20.0,
            'belief_timeout': 0.5, 'candidates': 30, 'iterations': 2, 'top_k': 5,
            'horizon': 4, **params}))
        spin_until(ros_node, lambda: self.beliefs.get_subscription_count() > 0
                   and len(self.cmds) > 3, 30, 'planner up and publishing')

    def feed(self, seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.beliefs.publish(belief_to_msg(np.full(self.z, 0.5), np.full(self.z, 0.1),
                                               Header()))
            self._spin(0.05)

    def _spin(self, seconds):
        end = time.monotonic() + seconds
        spin_until(self.node, lambda: time.monotonic() > end, seconds + 5)

    def moving(self, last=4):
        return any(abs(c.linear.x) + abs(c.linear.y) > 0 for c in self.cmds[-last:])

    def drive_until_moving(self, what):
        deadline = time.monotonic() + 15
        while not self.moving():
            assert time.monotonic() < deadline, f'no command after {what}'
            self.feed(0.2)


def test_zero_until_a_goal_then_a_late_joining_topic_goal_drives(ros_node, goal_ckpt):
    """Fresh beliefs but no goal: zero throughout. A goal image (640x480-like 480x480 rgb8)
    published before the planner existed (transient local) reaches it; the planner says so on
    planner/goal_set with the image's own header and starts driving."""
    ckpt, z = goal_ckpt
    goal_pub = ros_node.create_publisher(Image, 'goal_image', LATCHED)
    with NodeGroup() as group:
        rig = Rig(ros_node, group, ckpt, z)
        rig.feed(1.5)
        assert rig.cmds and not any(abs(c.linear.x) + abs(c.linear.y) > 0 for c in rig.cmds)
        assert not rig.goals
        goal_pub.publish(_image_msg(_rgb(1), 'my goal'))
        spin_until(ros_node, lambda: rig.goals, 10, 'planner/goal_set')
        assert rig.goals[-1].frame_id == 'my goal'
        rig.drive_until_moving('a goal image on the topic')
    # a planner started after the goal was sent
    with NodeGroup() as group:
        rig = Rig(ros_node, group, ckpt, z)
        spin_until(ros_node, lambda: any(g.frame_id == 'my goal' for g in rig.goals), 10,
                   'the late planner to take the latched goal')
        rig.drive_until_moving('the latched goal')


def test_compressed_goal_and_a_bad_goal_keeps_the_old_one(ros_node, goal_ckpt):
    ckpt, z = goal_ckpt
    comp = ros_node.create_publisher(CompressedImage, 'goal_image/compressed', LATCHED)
    raw = ros_node.create_publisher(Image, 'goal_image', LATCHED)
    with NodeGroup() as group:
        rig = Rig(ros_node, group, ckpt, z)
        ok, png = cv2.imencode('.png', _rgb(2, 640))
        msg = CompressedImage(format='png', data=png.tobytes())
        msg.header.frame_id = 'png goal'
        comp.publish(msg)
        spin_until(ros_node, lambda: any(g.frame_id == 'png goal' for g in rig.goals), 10,
                   'the compressed goal')
        rig.drive_until_moving('a compressed goal')
        n = len(rig.goals)
        bad = Image(height=480, width=640, encoding='rgb8', step=640 * 3, data=b'\0' * 100)
        bad.header.frame_id = 'truncated'
        raw.publish(bad)
        rig.feed(1.0)
        assert len(rig.goals) == n                 # refused: no announcement ...
        rig.drive_until_moving('a refused goal image')   # ... and still planning
        assert rig.proc.poll() is None


def test_goal_from_the_current_view_by_service(ros_node, goal_ckpt):
    ckpt, z = goal_ckpt
    client = ros_node.create_client(Trigger, 'planner/set_goal_from_current_view')
    with NodeGroup() as group:
        rig = Rig(ros_node, group, ckpt, z, belief_timeout=0.3)
        res = call(ros_node, client, Trigger.Request())
        assert not res.success and 'no current belief' in res.message
        assert not rig.goals
        rig.feed(0.5)
        rig.beliefs.publish(belief_to_msg(np.full(z, 0.5), np.full(z, 0.1), Header()))
        res = call(ros_node, client, Trigger.Request())
        assert res.success, res.message
        spin_until(ros_node, lambda: rig.goals, 10, 'planner/goal_set')
        assert rig.goals[-1].frame_id == 'current view'


def test_goal_from_an_image_file(ros_node, goal_ckpt, tmp_path):
    ckpt, z = goal_ckpt
    path = tmp_path / 'goal.jpg'
    cv2.imwrite(str(path), _rgb(3, 300))
    with NodeGroup() as group:
        rig = Rig(ros_node, group, ckpt, z, goal_image_file=str(path))
        spin_until(ros_node, lambda: rig.goals, 10, 'planner/goal_set from the file')
        assert rig.goals[-1].frame_id == f'file {path}'
        rig.drive_until_moving('a goal from a file')


@pytest.fixture(scope='module')
def bad_goal_starts(goal_ckpt, tmp_path_factory):
    ckpt, _ = goal_ckpt
    tmp = tmp_path_factory.mktemp('badgoal')
    (tmp / 'junk.png').write_bytes(b'no picture')
    bare = tmp / 'no_head.pt'
    tiny_world_model().save(bare, extra=ROOM_EXTRA)
    cases = {
        'bad objective': (['-p', f'checkpoint:={ckpt}', '-p', 'objective:=distance'],
                          "objective must be 'reward' or 'goal_image'"),
        'unreadable goal file': (['-p', f'checkpoint:={ckpt}', '-p', 'objective:=goal_image',
                                  '-p', f'goal_image_file:={tmp / "junk.png"}'],
                                 'cannot read goal image file'),
        'no goal head': (['-p', f'checkpoint:={bare}', '-p', 'objective:=goal_image'],
                         'has no goal head'),
    }
    procs = {case: subprocess.Popen([sys.executable, '-m', 'world_model_ctrl.planner',
                                     '--ros-args', *args], env=ros_env(unique_domain()),
                                    text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for case, (args, _) in cases.items()}
    return {case: (p.wait(60), *p.communicate(), cases[case][1]) for case, p in procs.items()}


@pytest.mark.parametrize('case', ['bad objective', 'unreadable goal file', 'no goal head'])
def test_bad_goal_setup_is_one_line_and_exit_2(case, bad_goal_starts):
    returncode, stdout, stderr, expect = bad_goal_starts[case]
    assert returncode == 2, stderr
    assert expect in stderr
    assert len([ln for ln in stderr.splitlines() if 'cannot start' in ln]) == 1, stderr
    assert_clean_output(stdout + stderr)


def test_goal_image_eval_over_ros_matches_the_ros_free_loop():
    """`wmc eval --goal-image` over DDS (each goal published on goal_image and awaited on
    planner/goal_set before the episode's reset) drives exactly the episodes of the ROS-free
    loop: same goals, same starts, same steps (the shipped model and its goal head)."""
    from world_model_ctrl.closed_loop import run_closed_loop
    from world_model_ctrl.offline_loop import run_offline
    kw = dict(episodes=2, seed=5, max_steps=40, progress=False, goal_image=True)
    ros = run_closed_loop(domain_id=unique_domain(), **kw)
    free = run_offline(**kw)
    assert ros['objective'] == free['objective'] == 'goal_image'
    keys = ('success', 'steps', 'oracle_steps', 'goal')
    assert [{k: p[k] for k in keys} for p in ros['per_episode']] == \
        [{k: p[k] for k in keys} for p in free['per_episode']]
    assert np.allclose([p['start'] for p in ros['per_episode']],
                       [p['start'] for p in free['per_episode']])
    assert any(p['success'] for p in ros['per_episode'])
    assert len(ros['_episodes'][0]['goal_image'].shape) == 3


def test_realtime_goal_image_eval_drives_the_oracle_to_the_same_goals():
    """`wmc eval --realtime --goal-image`: the oracle run over ROS is given each episode's goal
    pose (not the sim's goal) and needs about the ROS-free oracle's steps to reach it."""
    from world_model_ctrl.closed_loop import run_closed_loop
    s = run_closed_loop(domain_id=unique_domain(), episodes=2, seed=5, max_steps=40,
                        progress=False, goal_image=True, realtime=True)
    goals = [p['goal'] for p in s['per_episode']]
    assert goals == [p['goal'] for p in run_offline_goals(2, 5)]
    assert s['oracle_success_rate'] == 1.0
    assert abs(s['oracle_mean_steps'] - s['lockstep_oracle_mean_steps']) <= 2


def run_offline_goals(episodes, seed):
    from world_model_ctrl.offline_loop import run_offline
    return run_offline(episodes=episodes, seed=seed, max_steps=1, progress=False,
                       goal_image=True)['per_episode']
