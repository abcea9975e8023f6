from setuptools import find_packages, setup

package_name = 'room_sim'

setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
    ],
    install_requires=['setuptools'],
    zip_safe=True,
    maintainer='world_model_ctrl developers',
    maintainer_email='dev@world-model-ctrl.invalid',
    description='2D room simulator publishing camera images and rewards over ROS 2.',
    license='Apache-2.0',
    entry_points={
        'console_scripts': [
            'room_sim = room_sim.node:main',
        ],
    },
)
