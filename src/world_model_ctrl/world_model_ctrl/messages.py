"""Message conversions shared by the nodes (message types only; no rclpy node code).

The belief is published as a sensor_msgs/Image with encoding 32FC1, height 2 and width Z:
row 0 is the mean and row 1 the std of q(z_t). That is a stamped float matrix every ROS tool
can record and inspect, with the camera frame's header so latency can be traced end to end.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from geometry_msgs.msg import Twist, TwistStamped
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

BELIEF_ENCODING = '32FC1'


def latched_qos() -> QoSProfile:
    """Reliable, transient local, depth 1: the last message reaches a late subscriber (the
    planner's goal_image and planner/goal_set, and whoever sends or watches them)."""
    return QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


def stamp_ns(stamp) -> int:
    """A builtin_interfaces/Time in integer nanoseconds."""
    return stamp.sec * 1_000_000_000 + stamp.nanosec


def belief_to_msg(mean: np.ndarray, std: np.ndarray, header) -> Image:
    data = np.stack([np.asarray(mean, np.float32), np.asarray(std, np.float32)])   # (2, Z)
    msg = Image(header=header, height=2, width=data.shape[1], encoding=BELIEF_ENCODING,
                is_bigendian=0, step=data.shape[1] * 4)
    msg.data = data.tobytes()
    return msg


def belief_from_msg(msg: Image) -> tuple[np.ndarray, np.ndarray]:
    if msg.encoding != BELIEF_ENCODING or msg.height != 2:
        raise ValueError(f'not a belief message (encoding {msg.encoding}, height {msg.height})')
    data = np.frombuffer(bytes(msg.data), np.float32).reshape(2, msg.width)
    return data[0].copy(), data[1].copy()


def _set(obj, path: str, value: float) -> None:
    parts = path.split('.')
    for p in parts[:-1]:
        obj = getattr(obj, p)
    setattr(obj, parts[-1], float(value))


def _get(obj, path: str) -> float:
    for p in path.split('.'):
        obj = getattr(obj, p)
    return float(obj)


TWIST_FIELDS = tuple(f'{part}.{axis}' for part in ('linear', 'angular') for axis in 'xyz')


def check_action_fields(fields: Sequence[str], action_dim: int) -> list:
    """The node's ``action_fields`` parameter, refused unless it fits a Twist and the model."""
    fields = list(fields)
    bad = [f for f in fields if f not in TWIST_FIELDS]
    if bad:
        raise ValueError(f'action_fields {bad} are not Twist fields ({", ".join(TWIST_FIELDS)})')
    if len(fields) != action_dim:
        raise ValueError(f'action_fields {fields} do not match the model action_dim '
                         f'{action_dim}')
    return fields


def action_from_cmd(msg, fields: Sequence[str]) -> np.ndarray:
    """Twist or TwistStamped -> the action vector made of ``fields`` (e.g. linear.x, linear.y)."""
    twist = msg.twist if isinstance(msg, TwistStamped) else msg
    return np.array([_get(twist, f) for f in fields], dtype=np.float32)


def cmd_from_action(action, fields: Sequence[str], stamped: bool = False, header=None):
    """The action as a Twist, or a TwistStamped with ``header``. On cmd_vel the stamp must be
    the time of publishing: controllers drop commands older than their timeout (the frame a
    command answers goes on planner/answered instead)."""
    twist = Twist()
    for f, v in zip(fields, np.asarray(action, dtype=np.float64).reshape(-1)):
        _set(twist, f, v)
    if not stamped:
        return twist
    msg = TwistStamped(twist=twist)
    if header is not None:
        msg.header = header
    return msg
