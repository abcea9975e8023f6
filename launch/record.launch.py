"""Record exploration data from room_sim: ros2 launch world_model_ctrl record.launch.py."""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description():
    share = get_package_share_directory('world_model_ctrl')
    sim_params = os.path.join(share, 'config', 'sim.yaml')
    rec_params = os.path.join(share, 'config', 'record.yaml')
    output = LaunchConfiguration('output')
    return LaunchDescription([
        DeclareLaunchArgument('output', default_value='rosbag2_record',
                              description='bag directory to create'),
        DeclareLaunchArgument('storage', default_value='mcap', description='mcap | sqlite3'),
        Node(package='room_sim', executable='room_sim', name='room_sim',
             parameters=[sim_params, {'mode': 'lockstep'}]),
        Node(package='world_model_ctrl', executable='recorder', name='recorder',
             parameters=[rec_params, {'output': output,
                                      'storage': LaunchConfiguration('storage')}]),
        Node(package='world_model_ctrl', executable='explorer', name='explorer',
             parameters=[rec_params]),
    ])
