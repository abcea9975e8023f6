"""Record training data on a real robot: camera + commands + reward + odometry into one bag.

    ros2 launch world_model_ctrl record_robot.launch.py goal:='[2.0, 0.5]' output:=run1
    ros2 launch world_model_ctrl record_robot.launch.py drive:=teleop goal:='[2.0, 0.5]' \
        image_topic:=/front/image_raw compressed:=true cmd_vel_topic:=/base/cmd_vel \
        odom_topic:=/base/odom
    # drive:=teleop, in a second terminal (the keyboard drives, this launch records):
    ros2 run teleop_twist_keyboard teleop_twist_keyboard --ros-args -r cmd_vel:=/base/cmd_vel

The robot's drivers (camera, base, odometry) must be running. Started here: `pose_reward`
(reward = -distance to `goal` from odometry), `recorder` (the remapped camera, cmd_vel, reward
and odom topics) and, with drive:=explorer, the `explorer` (config/record_robot.yaml: onboard
world, no sim resets, `steps` commands then a zero and a pause). Topics default to relative
names, so `namespace` moves them all. Unless FASTDDS_DEFAULT_PROFILES_FILE is set, the nodes get
config/fastdds.xml (large camera frames through shared memory). docs/data.md, "Recording on a
robot", has the equivalent `ros2 bag record` command.
"""
import os

import yaml
from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

ARGS = {
    'image_topic': ('camera/image_raw', 'camera topic (sensor_msgs/Image); relative names '
                    'resolve in namespace'),
    'compressed': ('false', 'record <image_topic>/compressed (sensor_msgs/CompressedImage) '
                   'instead of the raw images'),
    'cmd_vel_topic': ('cmd_vel', 'velocity commands (geometry_msgs/Twist) the robot obeys'),
    'odom_topic': ('odom', 'odometry (nav_msgs/Odometry) of the robot'),
    'goal': ('', "reward goal [x, y] in the odometry frame; '' = none until a PoseStamped "
             "arrives on goal_pose (RViz '2D Goal Pose'), no reward before"),
    'distance_scale': ('1.0', 'reward = -distance to the goal / distance_scale'),
    'output': ('rosbag2_robot', 'bag directory to create'),
    'storage': ('mcap', 'mcap | sqlite3'),
    'drive': ('explorer', 'explorer (exploration policy) | teleop (you drive, e.g. '
              'teleop_twist_keyboard; no explorer started)'),
    'namespace': ('', "namespace of all nodes and their relative topics ('robot1')"),
}
DRIVES = ('explorer', 'teleop')


def _numbers(name: str, text: str, count: int = 0):
    """A launch argument as the node's float(s): '2' -> 2.0, '[2, 1]' -> [2.0, 1.0] (count=2).
    Refused here with a clear message rather than as a parameter type error in the node."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = None
    values = value if count and isinstance(value, list) else [value]
    if len(values) != (count or 1) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        what = f'[{count} numbers]' if count else 'a number'
        raise ValueError(f'launch argument {name} must be {what}, got {text!r}')
    return [float(v) for v in values] if count else float(values[0])


def _nodes(context, params):
    a = {name: LaunchConfiguration(name).perform(context) for name in ARGS}
    drive = a['drive'].strip().lower()
    if drive not in DRIVES:
        raise ValueError(f"drive must be one of {', '.join(DRIVES)}; got {a['drive']!r}")
    compressed = a['compressed'].strip().lower() in ('true', '1', 'yes', 'on')
    remaps = [('camera/image_raw', a['image_topic']),
              ('camera/image_raw/compressed', a['image_topic'] + '/compressed'),
              ('cmd_vel', a['cmd_vel_topic']), ('odom', a['odom_topic'])]
    camera = 'camera/image_raw/compressed' if compressed else 'camera/image_raw'
    reward = {'distance_scale': _numbers('distance_scale', a['distance_scale'])}
    if a['goal'].strip():
        reward['goal'] = _numbers('goal', a['goal'], count=2)
    ns = a['namespace']
    nodes = [
        Node(package='world_model_ctrl', executable='pose_reward', name='pose_reward',
             namespace=ns, parameters=[params, reward], remappings=remaps),
        # The recorder resolves its topics with these remappings: it records what the robot
        # publishes, under the names the robot uses.
        Node(package='world_model_ctrl', executable='recorder', name='recorder', namespace=ns,
             parameters=[params, {'output': ParameterValue(a['output'], value_type=str),
                                  'storage': ParameterValue(a['storage'], value_type=str),
                                  'topics': [camera, 'cmd_vel', 'reward', 'odom']}],
             remappings=remaps, output='screen'),
    ]
    if drive == 'explorer':
        nodes.append(Node(package='world_model_ctrl', executable='explorer', name='explorer',
                          namespace=ns, parameters=[params], remappings=remaps,
                          output='screen'))
    return nodes


def generate_launch_description():
    share = get_package_share_directory('world_model_ctrl')
    profile = 'FASTDDS_DEFAULT_PROFILES_FILE'
    fastdds = [] if os.environ.get(profile) else [
        SetEnvironmentVariable(profile, os.path.join(share, 'config', 'fastdds.xml'))]
    params = os.path.join(share, 'config', 'record_robot.yaml')
    return LaunchDescription([
        *[DeclareLaunchArgument(name, default_value=default, description=doc)
          for name, (default, doc) in ARGS.items()],
        *fastdds,
        OpaqueFunction(function=_nodes, args=[params]),
    ])
