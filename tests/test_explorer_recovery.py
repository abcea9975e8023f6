"""The explorer never stalls a lockstep loop when a message is lost (a subscription that had not
matched yet): against a sim in this process that loses the first reset's episode_start and the
explorer's first command, over real DDS. Without recovery both left `wmc collect` waiting
forever (seen once: a 160-episode collection stopped after ~200 frames)."""
import time

from geometry_msgs.msg import PoseStamped, Twist
from rclpy.qos import QoSProfile
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from std_srvs.srv import Trigger

from rosutil import spin_until
from world_model_ctrl.procs import NodeGroup, NodeSpec


class LossySim:
    """Lockstep like room_sim (a frame per command or reset, the frame re-sent after 0.5 s
    without one), but the first reset's episode_start and the first command are lost."""

    def __init__(self, node):
        qos = QoSProfile(depth=100)
        self.node = node
        self.pub_img = node.create_publisher(Image, 'camera/image_raw', qos)
        self.pub_marker = node.create_publisher(Header, 'room_sim/episode_start', qos)
        self.pub_pose = node.create_publisher(PoseStamped, 'room_sim/pose', qos)
        self.pub_goal = node.create_publisher(PoseStamped, 'room_sim/goal', qos)
        node.create_service(Trigger, 'room_sim/reset', self.on_reset)
        node.create_subscription(Twist, 'cmd_vel', self.on_cmd, qos)
        node.create_timer(0.1, self.resend)
        self.k, self.resets, self.cmds, self.steps = 0, 0, [], 0
        self.lose_marker = self.lose_cmd = 1
        self.publish()

    def header(self):
        h = Header(frame_id='room')
        h.stamp.sec, h.stamp.nanosec = divmod(self.k * 100_000_000, 1_000_000_000)
        return h

    def publish(self):
        h = self.header()
        self.pub_pose.publish(PoseStamped(header=h))
        goal = PoseStamped(header=h)
        goal.pose.position.x = goal.pose.position.y = 1.0
        self.pub_goal.publish(goal)
        self.pub_img.publish(Image(header=h, height=4, width=4, encoding='rgb8', step=12,
                                   data=bytes(48)))
        self.sent = time.monotonic()

    def resend(self):
        if time.monotonic() - self.sent > 0.5:
            self.publish()

    def on_reset(self, request, response):
        self.resets += 1
        self.k += 1
        if self.lose_marker:
            self.lose_marker -= 1
        else:
            self.pub_marker.publish(Header(stamp=self.header().stamp, frame_id=str(self.resets)))
        self.publish()
        response.success = True
        return response

    def on_cmd(self, msg):
        self.cmds.append((msg.linear.x, msg.linear.y))
        if self.lose_cmd:
            self.lose_cmd -= 1
            return
        self.k += 1
        self.steps += 1
        self.publish()


def test_explorer_resets_again_and_resends_a_command_the_sim_lost(ros_node):
    sim = LossySim(ros_node)
    with NodeGroup() as group:
        proc = group.start(NodeSpec('world_model_ctrl.explorer', {
            'episodes': 1, 'steps': 3, 'seed': 1, 'progress': False}))
        spin_until(ros_node, lambda: proc.poll() is not None, 40, 'the explorer to finish')
    assert proc.returncode == 0
    assert sim.resets == 2                  # the first reset's episode_start never came
    assert sim.steps == 3                   # the episode's three commands all stepped it
    assert len(sim.cmds) == 4 and sim.cmds[0] == sim.cmds[1], sim.cmds   # one sent twice
