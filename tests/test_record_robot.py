"""Recording on a real robot: launch/record_robot.launch.py, and bags of its topics train.

launch/launch_ros are not installable here: the launch file is loaded against recording
stand-ins (as tests/test_launch.py does) that run its OpaqueFunction with the arguments given,
type parameters the way launch_ros does, and resolve topics the way rcl does (namespace, then
remapping), so the test sees what each node would subscribe to and what the bag would hold.
"""
import importlib.util
import signal
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import yaml

from bagfactory import SynthBag
from launchkit import standins
from world_model_ctrl.data import DataConfig, bag_to_episodes
from world_model_ctrl.paths import config_file, share_dir

LAUNCH = Path(__file__).resolve().parents[1] / 'launch' / 'record_robot.launch.py'


class _Config:
    def __init__(self, name):
        self.name = name

    def perform(self, context):
        return context[self.name]      # KeyError like launch's for an undeclared argument


class _Typed:
    """launch_ros.parameter_descriptions.ParameterValue"""

    def __init__(self, value, value_type=None):
        self.value, self.value_type = value, value_type


def _standins() -> dict:
    return standins(share_dir(), {'LaunchConfiguration': _Config}, _Typed)


def _typed(value):
    """What launch_ros hands the node: strings (and lists of them) are YAML-parsed unless a
    ParameterValue fixes the type; other values pass as they are."""
    if isinstance(value, _Typed):
        return value.value_type(value.value) if value.value_type else yaml.safe_load(value.value)
    if isinstance(value, str):
        return yaml.safe_load(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [yaml.safe_load(v) for v in value]
    return value


def resolve(name: str, namespace: str, remaps: dict) -> str:
    """rcl's name resolution: expand in the node's namespace, then apply the first matching
    remapping (its target expanded the same way)."""
    ns = '/' + namespace.strip('/') if namespace.strip('/') else ''

    def expand(n):
        return n if n.startswith('/') else f'{ns}/{n}'
    for k, v in remaps.items():
        if expand(k) == expand(name):
            return expand(v)
    return expand(name)


def robot_graph(args: dict, monkeypatch):
    """(declared defaults, {executable: node}, env) for launch arguments ``args``."""
    for name, mod in _standins().items():
        monkeypatch.setitem(sys.modules, name, mod)
    spec = importlib.util.spec_from_file_location('record_robot_launch', LAUNCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    entities = module.generate_launch_description()
    declared = {e.args[0]: e.kwargs['default_value'] for e in entities
                if e.kind == 'DeclareLaunchArgument'}
    unknown = set(args) - set(declared)
    assert not unknown, f'not declared: {unknown}'
    context = {**declared, **args}
    nodes = {}
    for e in entities:
        if e.kind != 'OpaqueFunction':
            continue
        for n in e.kwargs['function'](context, *e.kwargs.get('args', [])):
            assert n.kind == 'Node'
            params = {}
            for p in n.kwargs['parameters']:
                if isinstance(p, dict):
                    params.update({k: _typed(v) for k, v in p.items()})
            ns = n.kwargs.get('namespace', '')
            remaps = dict(n.kwargs.get('remappings', []))
            nodes[n.kwargs['executable']] = types.SimpleNamespace(
                package=n.kwargs['package'], name=n.kwargs['name'], namespace=ns,
                files=[str(p) for p in n.kwargs['parameters'] if isinstance(p, str)],
                params=params, remaps=remaps,
                topic=lambda t, ns=ns, remaps=remaps: resolve(t, ns, remaps))
    env = {e.args[0]: e.args[1] for e in entities if e.kind == 'SetEnvironmentVariable'}
    return declared, nodes, env


def recorded(nodes) -> list:
    rec = nodes['recorder']
    return [rec.topic(t) for t in rec.params['topics']]


ROBOT_ARGS = {'image_topic': '/front/image_raw', 'cmd_vel_topic': '/base/cmd_vel',
              'odom_topic': '/base/odom', 'goal': '[2, -1]', 'distance_scale': '2',
              'output': '20261201', 'storage': 'sqlite3', 'namespace': 'robot1'}


def test_declared_arguments_and_defaults(monkeypatch):
    declared, _, _ = robot_graph({}, monkeypatch)
    assert declared == {
        'image_topic': 'camera/image_raw', 'compressed': 'false', 'cmd_vel_topic': 'cmd_vel',
        'odom_topic': 'odom', 'goal': '', 'distance_scale': '1.0', 'output': 'rosbag2_robot',
        'storage': 'mcap', 'drive': 'explorer', 'namespace': ''}


@pytest.mark.parametrize('drive', ['explorer', 'teleop'])
def test_nodes_params_and_remaps_for_each_drive(drive, monkeypatch):
    _, nodes, _ = robot_graph({**ROBOT_ARGS, 'drive': drive}, monkeypatch)
    assert list(nodes) == ['pose_reward', 'recorder'] + (['explorer'] if drive == 'explorer'
                                                         else [])
    params_file = str(share_dir() / 'config' / 'record_robot.yaml')
    for exe, n in nodes.items():
        assert (n.package, n.name, n.namespace) == ('world_model_ctrl', exe, 'robot1')
        assert n.files == [params_file]
    # every node sees the robot's topics; what the nodes publish stays in the namespace
    reward = nodes['pose_reward']
    assert reward.topic('odom') == '/base/odom'
    assert (reward.topic('reward'), reward.topic('goal_pose')) == ('/robot1/reward',
                                                                   '/robot1/goal_pose')
    assert reward.params == {'goal': [2.0, -1.0], 'distance_scale': 2.0}
    assert all(type(v) is float for v in [*reward.params['goal'],    # '[2, -1]' and '2' as
                                          reward.params['distance_scale']])   # the node's type
    rec = nodes['recorder']
    assert rec.params == {'output': '20261201', 'storage': 'sqlite3',        # not the int
                          'topics': ['camera/image_raw', 'cmd_vel', 'reward', 'odom']}
    assert recorded(nodes) == ['/front/image_raw', '/base/cmd_vel', '/robot1/reward',
                               '/base/odom']
    if drive == 'explorer':
        exp = nodes['explorer']
        assert exp.params == {}                                  # all from record_robot.yaml
        assert (exp.topic('camera/image_raw'), exp.topic('cmd_vel'), exp.topic('odom')) == \
            ('/front/image_raw', '/base/cmd_vel', '/base/odom')


def test_defaults_are_relative_and_compressed_records_the_compressed_topic(monkeypatch):
    _, nodes, _ = robot_graph({}, monkeypatch)
    assert recorded(nodes) == ['/camera/image_raw', '/cmd_vel', '/reward', '/odom']
    assert 'goal' not in nodes['pose_reward'].params        # none: from goal_pose later
    assert nodes['pose_reward'].params['distance_scale'] == 1.0
    assert all(not v.startswith('/') for n in nodes.values() for v in n.remaps.values())
    _, nodes, _ = robot_graph({'namespace': 'r2', 'compressed': 'true', 'drive': 'teleop'},
                              monkeypatch)
    assert recorded(nodes) == ['/r2/camera/image_raw/compressed', '/r2/cmd_vel', '/r2/reward',
                               '/r2/odom']
    _, nodes, _ = robot_graph({'image_topic': '/front/image_raw', 'compressed': 'True'},
                              monkeypatch)
    assert recorded(nodes)[0] == '/front/image_raw/compressed'


@pytest.mark.parametrize('args, match', [
    ({'drive': 'joystick'}, 'drive must be one of explorer, teleop'),
    ({'goal': '[1.0]'}, r'goal must be \[2 numbers\]'),
    ({'goal': 'home'}, r'goal must be \[2 numbers\]'),
    ({'goal': '[1, a]'}, r'goal must be \[2 numbers\]'),
    ({'distance_scale': 'far'}, 'distance_scale must be a number'),
])
def test_bad_arguments_are_refused_by_the_launch_file(args, match, monkeypatch):
    with pytest.raises(ValueError, match=match):
        robot_graph(args, monkeypatch)


def test_record_robot_yaml_sets_the_onboard_explorer(monkeypatch):
    doc = yaml.safe_load(config_file('record_robot.yaml').read_text())
    assert set(doc) == {'/**/explorer', '/**/pose_reward', '/**/recorder'}
    explorer = doc['/**/explorer']['ros__parameters']
    assert explorer['reset_service'] is False
    assert (explorer['pose_topic'], explorer['pose_type']) == ('odom', 'odometry')
    assert explorer['world'] == 'onboard' and len(explorer['action_limits']) == 2
    assert doc['/**/recorder']['ros__parameters']['log_time'] == 'receive'
    assert 'topics' not in doc['/**/recorder']['ros__parameters']    # the launch file's


def test_fastdds_profile_unless_set(monkeypatch):
    monkeypatch.delenv('FASTDDS_DEFAULT_PROFILES_FILE', raising=False)
    _, _, env = robot_graph({}, monkeypatch)
    assert env == {'FASTDDS_DEFAULT_PROFILES_FILE': str(share_dir() / 'config' / 'fastdds.xml')}
    monkeypatch.setenv('FASTDDS_DEFAULT_PROFILES_FILE', '/my/profile.xml')
    assert robot_graph({}, monkeypatch)[2] == {}


# --- the bags train -------------------------------------------------------------------------

T0 = 1_800_000_000 * 10**9
FRAME = 66_666_667                  # 15 Hz camera
ODOM = 33_333_333                   # 30 Hz odometry, a reward 1 ms after each


def robot_bag(path, image_topic='/camera/image_raw', compressed=False, storage='mcap'):
    """What `ros2 bag record` of the robot topics holds (log time = reception, wall clock):
    a camera streaming all along (header stamps 5 ms before reception), one explorer command
    10 ms after each of 12 frames, then a zero command and a 1.1 s pause (camera still on), and
    again; a camera dropout of 1.3 s (no frames, no commands) in the second run. Frame k shows k;
    the robot moves along x at 0.1 m/s, goal at the origin: reward = -x. No episode markers.

    Returns ({frame index: log ns}, [(log ns, vx, wz)], [(log ns, reward)])."""
    bag = SynthBag(path, storage)
    frames, cmds, rewards = {}, [], []
    lost = set(range(40, 60))                     # 20 frames = 1.33 s without camera
    for k in range(72):
        t = T0 + k * FRAME
        if k not in lost:
            frames[k] = t
            rgb = np.full((8, 8, 3), k, np.uint8)
            if compressed:
                bag.compressed(t, t - 5_000_000, rgb, 'png', topic=image_topic)
            else:
                bag.image(t, t - 5_000_000, rgb, topic=image_topic)
        step = k % 30                             # 0..11 drive, 12 stop, 13..29 pause
        if k in lost or step > 12:
            continue
        vx, wz = (0.01 * (k + 1), -0.02 * (k + 1)) if step < 12 else (0.0, 0.0)
        cmds.append((t + 10_000_000, vx, wz))
    for t, vx, wz in cmds:
        bag.cmd(t, vx=vx, wz=wz)
    for i in range(int(72 * FRAME / ODOM)):
        t = T0 - 20_000_000 + i * ODOM
        x = 0.1 * (t - T0) / 1e9
        bag.odom(t, t, x, 0.0)
        rewards.append((t + 1_000_000, -abs(x)))
        bag.reward(t + 1_000_000, -abs(x))
    bag.write()
    return frames, cmds, rewards


@pytest.mark.parametrize('compressed, storage', [(False, 'mcap'), (True, 'sqlite3')])
def test_a_robot_bag_without_episode_markers_loads_with_diff_drive_actions(
        tmp_path, compressed, storage):
    image_topic = '/camera/image_raw' + ('/compressed' if compressed else '')
    frames, cmds, rewards = robot_bag(tmp_path / 'bag', image_topic, compressed, storage)
    cfg = DataConfig(image_topic=image_topic, reward_topic='/reward', cmd_topic='/cmd_vel',
                     episode_topic=None, action_fields=['linear.x', 'angular.z'], image_size=8)
    episodes = bag_to_episodes(tmp_path / 'bag', cfg)
    # one episode per unbroken camera stream: the pause is data (zero actions), the dropout
    # (> max_gap without frames) splits
    shown = [[int(img[0, 0, 0]) for img in ep.images] for ep in episodes]
    assert shown == [list(range(40)), list(range(60, 72))]
    for ep, ks in zip(episodes, shown):
        for t, k in enumerate(ks):
            # a_{t-1}: the latest command before the frame, zero when none in 0.5 s or at the
            # episode's first frame
            before = [c for c in cmds if c[0] < frames[k] and frames[k] - c[0] <= 500_000_000]
            want = (0.0, 0.0) if t == 0 or not before else before[-1][1:]
            assert tuple(ep.actions[t]) == pytest.approx(want, abs=0), (k, want)
            r = [v for log, v in rewards if log <= frames[k]][-1]
            assert ep.rewards[t] == np.float32(r)
    pause = [t for t, k in enumerate(shown[0]) if 13 <= k <= 30]
    assert len(pause) == 18 and not episodes[0].actions[pause].any()
    assert (episodes[0].actions[1:13, 1] < 0).all()              # angular.z made it in


def test_recorder_with_the_launch_parameters_records_the_remapped_topics(
        ros_node, tmp_path, monkeypatch):
    """pose_reward + recorder as record_robot.launch.py configures them (drive:=teleop: this
    test drives), robot topics under other names and a namespace; the bag then loads."""
    from geometry_msgs.msg import Twist
    from nav_msgs.msg import Odometry
    from rclpy.qos import QoSProfile
    from sensor_msgs.msg import Image
    from std_msgs.msg import Float32

    from rosutil import spin_until
    from world_model_ctrl.procs import NodeGroup, NodeSpec
    bag = tmp_path / 'robot_bag'
    _, nodes, _ = robot_graph({**ROBOT_ARGS, 'drive': 'teleop', 'output': str(bag),
                               'storage': 'mcap', 'goal': '[0, 0]', 'distance_scale': '1'},
                              monkeypatch)
    group = NodeGroup()
    procs = {exe: group.start(NodeSpec(f'world_model_ctrl.{exe}', n.params, n.remaps,
                                       n.files, n.name, n.namespace))
             for exe, n in nodes.items()}
    try:
        qos = QoSProfile(depth=100)
        rewards = []
        ros_node.create_subscription(Float32, '/robot1/reward',
                                     lambda m: rewards.append(m.data), qos)
        pubs = {'image': ros_node.create_publisher(Image, '/front/image_raw', qos),
                'cmd': ros_node.create_publisher(Twist, '/base/cmd_vel', qos),
                'odom': ros_node.create_publisher(Odometry, '/base/odom', qos)}
        # the recorder subscribes once it sees each topic: all four, reward included
        spin_until(ros_node, lambda: all(p.get_subscription_count() >= (2 if k == 'odom' else 1)
                                         for k, p in pubs.items())
                   and ros_node.count_subscribers('/robot1/reward') > 1, timeout=30,
                   what='pose_reward and recorder')
        time.sleep(1.0)         # best-effort odometry reader: let discovery settle
        for k in range(30):
            # odometry, its reward (as from a fast odometry stream: just before the frame),
            # the frame, the command that answers it
            now = ros_node.get_clock().now().to_msg()
            odom = Odometry()
            odom.header.stamp, odom.header.frame_id = now, 'odom'
            odom.pose.pose.position.x = 0.05 * k
            pubs['odom'].publish(odom)
            spin_until(ros_node, lambda: len(rewards) > k, timeout=10, what=f'reward {k}')
            time.sleep(0.01)
            img = Image(height=8, width=8, encoding='rgb8', step=24, data=bytes([k]) * 192)
            img.header.stamp = now
            pubs['image'].publish(img)
            time.sleep(0.02)
            cmd = Twist()
            cmd.linear.x, cmd.angular.z = 0.1 * k, -0.1 * k
            pubs['cmd'].publish(cmd)
            time.sleep(0.08)
        time.sleep(0.5)
        procs['recorder'].send_signal(signal.SIGINT)
        assert procs['recorder'].wait(20) == 0
    finally:
        group.stop_all()
    from rosbags.highlevel import AnyReader
    with AnyReader([bag]) as reader:
        topics = {c.topic: (c.msgtype, c.msgcount) for c in reader.connections}
    assert {t: m for t, (m, _) in topics.items()} == {
        '/front/image_raw': 'sensor_msgs/msg/Image', '/base/cmd_vel': 'geometry_msgs/msg/Twist',
        '/robot1/reward': 'std_msgs/msg/Float32', '/base/odom': 'nav_msgs/msg/Odometry'}
    assert topics['/front/image_raw'][1] == topics['/base/cmd_vel'][1] == 30
    # the recorder subscribes to reward when it appears: the first may come before it matched
    assert topics['/robot1/reward'][1] >= 28
    cfg = DataConfig(image_topic='/front/image_raw', reward_topic='/robot1/reward',
                     cmd_topic='/base/cmd_vel', episode_topic=None,
                     action_fields=['linear.x', 'angular.z'], image_size=8)
    (episode,) = bag_to_episodes(bag, cfg)
    ks = [int(img[0, 0, 0]) for img in episode.images]
    assert ks[0] <= 2 and ks == list(range(ks[0], 30))     # (a frame without reward: dropped)
    for t, k in enumerate(ks[1:], 1):                   # frame k: command k - 1, reward k
        assert episode.actions[t] == pytest.approx([0.1 * (k - 1), -0.1 * (k - 1)])
        assert episode.rewards[t] == pytest.approx(-0.05 * k)
