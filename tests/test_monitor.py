"""image_monitor over DDS: corrupted frames stop the planner, familiar ones release it."""
import numpy as np
from geometry_msgs.msg import Twist
from rclpy.qos import QoSProfile
from sensor_msgs.msg import Image
from std_msgs.msg import Bool, Float32, Header

from room_sim.world import RoomWorld
from rosutil import spin_until
from world_model_ctrl.messages import belief_to_msg
from world_model_ctrl.paths import default_checkpoint
from world_model_ctrl.procs import NodeGroup, NodeSpec
from world_model_ctrl.ssm import SSMConfig


def image_msg(rgb):
    msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding='rgb8', step=rgb.shape[1] * 3)
    msg.data = rgb.tobytes()
    return msg


def test_monitor_stops_and_releases_the_planner(ros_node, tiny_ssm_ckpt):
    world = RoomWorld(seed=0)
    clean = world.reset()
    rng = np.random.default_rng(0)
    broken = np.clip(clean.astype(int) + rng.normal(0, 60, clean.shape), 0, 255).astype(np.uint8)
    scores, stops, cmds = [], [], []
    ros_node.create_subscription(Float32, 'image_monitor/score', scores.append, 10)
    ros_node.create_subscription(Bool, 'planner/stop', stops.append, 10)
    ros_node.create_subscription(Twist, 'cmd_vel', cmds.append, QoSProfile(depth=1000))
    pub_img = ros_node.create_publisher(Image, 'camera/image_raw', 10)
    pub_belief = ros_node.create_publisher(Image, 'belief', 10)
    z = SSMConfig.from_preset('debug').latent_dim

    def drive(frame, what, cond, timeout=20):
        def step():
            pub_img.publish(image_msg(frame))
            pub_belief.publish(belief_to_msg(np.full(z, 0.5), np.full(z, 0.1), Header()))
            return cond()
        spin_until(ros_node, step, timeout, what)

    def moving():
        return any(abs(c.linear.x) + abs(c.linear.y) > 0 for c in cmds[-3:])

    def moving_now():
        return abs(cmds[-1].linear.x) + abs(cmds[-1].linear.y) > 0

    with NodeGroup() as group:
        group.start(NodeSpec('world_model_ctrl.image_monitor', {
            'checkpoint': str(default_checkpoint('prior.pt')), 'rate_hz': 5.0, 'hold_s': 0.4,
            'release_s': 0.4}))
        group.start(NodeSpec('world_model_ctrl.planner', {
            'checkpoint': str(tiny_ssm_ckpt), 'rate_hz': 20.0, 'candidates': 30, 'iterations': 1,
            'top_k': 5, 'horizon': 3}))
        drive(clean, 'the planner to move on familiar frames',
              lambda: len(scores) > 3 and moving() and stops and not stops[-1].data, 60)
        n = len(scores)
        drive(broken, 'the monitor to stop the planner', lambda: stops and stops[-1].data)
        assert max(s.data for s in scores[n:]) > min(s.data for s in scores[:n])
        # The planner acts on the stop when its executor gets to it (can take a few periods
        # on a loaded machine): from its first zero command on, every command must be zero.
        drive(broken, 'the planner to act on the stop', lambda: cmds and not moving_now())
        n_cmd = len(cmds)
        drive(broken, 'zero commands while stopped', lambda: len(cmds) > n_cmd + 5)
        assert all(abs(c.linear.x) + abs(c.linear.y) == 0 for c in cmds[n_cmd - 1:])
        drive(clean, 'the release', lambda: stops and not stops[-1].data)
        drive(clean, 'the planner to move again', moving)
    arr = np.array([[c.linear.x, c.linear.y] for c in cmds])
    assert np.all(np.isfinite(arr)) and np.abs(arr).max() <= 0.5    # the trained bound per axis
