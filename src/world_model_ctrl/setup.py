from glob import glob

from setuptools import find_packages, setup

package_name = 'world_model_ctrl'

setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        # launch/ and config/ are links to the repository's top-level folders.
        ('share/' + package_name + '/launch', glob('launch/*.launch.py')),
        ('share/' + package_name + '/config', glob('config/*.yaml') + glob('config/*.xml')),
        ('share/' + package_name + '/models', glob('models/*.pt') + glob('models/*.md')
         + glob('models/*.json')),
    ],
    install_requires=['setuptools'],
    zip_safe=True,
    maintainer='world_model_ctrl developers',
    maintainer_email='dev@world-model-ctrl.invalid',
    description='Learned world-model control from a camera over ROS 2.',
    license='Apache-2.0',
    entry_points={
        'console_scripts': [
            'wmc = world_model_ctrl.cli:main',
            'recorder = world_model_ctrl.recorder:main',
            'explorer = world_model_ctrl.explorer:main',
            'belief = world_model_ctrl.belief:main',
            'planner = world_model_ctrl.planner:main',
            'image_monitor = world_model_ctrl.image_monitor:main',
            'pose_reward = world_model_ctrl.pose_reward:main',
        ],
    },
)
