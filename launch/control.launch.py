"""Closed-loop control: camera -> belief -> CEM planner -> cmd_vel (+ room_sim when use_sim).

    ros2 launch world_model_ctrl control.launch.py
    ros2 launch world_model_ctrl control.launch.py use_sim:=false \
        image_topic:=/my_cam/image_raw cmd_vel_topic:=/my_robot/cmd_vel checkpoint:=/path/ssm.pt
    ros2 launch world_model_ctrl control.launch.py namespace:=robot1   # /robot1/camera/image_raw,
                                                                        # /robot1/cmd_vel, ...
Topics default to relative names, so a namespace moves all of them (not /clock, /diagnostics);
config/*.yaml use `/**/node:` keys, so they apply under any namespace. Unless
FASTDDS_DEFAULT_PROFILES_FILE is set, the nodes get config/fastdds.xml (large camera frames
through shared memory; start the camera driver with it too: docs/control.md).

`wmc up` starts the same graph where launch_ros is not installed (world_model_ctrl/graph.py).
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution, PythonExpression
from launch_ros.actions import Node

ARGS = {
    'checkpoint': ('shipped', "world-model checkpoint ('shipped' = this package's model)"),
    'device': ('cpu', 'torch device for belief and planner: auto | cpu | cuda'),
    'image_topic': ('camera/image_raw',
                    'camera topic (sensor_msgs/Image); relative names resolve in namespace'),
    'cmd_vel_topic': ('cmd_vel', 'velocity command topic; relative names resolve in namespace'),
    'cmd_vel_stamped': ('false', 'publish/subscribe geometry_msgs/TwistStamped'),
    'compressed': ('false', 'camera as sensor_msgs/CompressedImage on <image_topic>/compressed'),
    'use_sim': ('true', 'start room_sim'),
    'use_sim_time': ('false', 'use /clock'),
    'namespace': ('', "namespace of all nodes and their relative topics ('robot1' or '/robot1')"),
    'monitor': ('false', 'start image_monitor (DDPM prior): stops the planner on odd frames'),
    'prior_checkpoint': ('shipped', "image prior checkpoint ('shipped' = this package's)"),
    'world': ('overhead', 'overhead (camera above, linear.x/linear.y) | onboard (forward camera, '
                          'diff drive): picks the sim and control params and the shipped model'),
    'objective': ('reward', 'what the planner maximises: reward (the reward topic\'s model) | '
                            'goal_image (closeness to a goal picture: goal_image topic, '
                            'planner/set_goal_from_current_view, goal_image_file)'),
    'goal_image_file': ("''", 'objective goal_image: an image file to plan toward from the start'),
}


def generate_launch_description():
    share = get_package_share_directory('world_model_ctrl')
    arg = LaunchConfiguration
    # config/control.yaml, sim.yaml (overhead) or control_onboard.yaml, sim_onboard.yaml
    suffix = PythonExpression(["'' if '", arg('world'), "' == 'overhead' else '_", arg('world'),
                               "'"])
    control = PathJoinSubstitution([share, 'config', ['control', suffix, '.yaml']])
    sim = PathJoinSubstitution([share, 'config', ['sim', suffix, '.yaml']])
    profile = 'FASTDDS_DEFAULT_PROFILES_FILE'
    fastdds = [] if os.environ.get(profile) else [
        SetEnvironmentVariable(profile, os.path.join(share, 'config', 'fastdds.xml'))]
    remaps = [('camera/image_raw', arg('image_topic')), ('cmd_vel', arg('cmd_vel_topic'))]
    common = {'cmd_vel_stamped': arg('cmd_vel_stamped'), 'use_sim_time': arg('use_sim_time')}
    model = {'checkpoint': arg('checkpoint'), 'device': arg('device'), 'world': arg('world'),
             **common}
    return LaunchDescription([
        *[DeclareLaunchArgument(name, default_value=default, description=doc)
          for name, (default, doc) in ARGS.items()],
        *fastdds,
        Node(package='room_sim', executable='room_sim', name='room_sim',
             namespace=arg('namespace'), parameters=[sim, {**common, 'world': arg('world')}],
             remappings=remaps,
             condition=IfCondition(arg('use_sim'))),
        Node(package='world_model_ctrl', executable='belief', name='belief',
             namespace=arg('namespace'),
             parameters=[control, {**model, 'compressed': arg('compressed')}],
             remappings=remaps),
        # With the monitor on, the planner holds zero whenever the monitor's heartbeat stops.
        Node(package='world_model_ctrl', executable='planner', name='planner',
             namespace=arg('namespace'),
             parameters=[control, {**model, 'require_monitor': arg('monitor'),
                                   'objective': arg('objective'),
                                   'goal_image_file': arg('goal_image_file')}],
             remappings=remaps, output='screen'),
        Node(package='world_model_ctrl', executable='image_monitor', name='image_monitor',
             namespace=arg('namespace'),
             parameters=[control, {'checkpoint': arg('prior_checkpoint'),
                                   'device': arg('device'),
                                   'use_sim_time': arg('use_sim_time'),
                                   'compressed': arg('compressed')}],
             remappings=[('camera/image_raw', arg('image_topic'))],
             condition=IfCondition(arg('monitor'))),
    ])
