"""Shared fixtures. ROS tests use real DDS in a domain of their own, on localhost only."""
import itertools
import os

import pytest

os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
os.environ.setdefault('PYTHONUNBUFFERED', '1')
_counter = itertools.count()


def unique_domain() -> int:
    # Distinct per process and per test, so parallel test runs never see each other's topics.
    return 1 + (os.getpid() * 17 + next(_counter) * 7) % 200


@pytest.fixture
def ros_domain(monkeypatch):
    """A fresh ROS_DOMAIN_ID for this test, exported so child nodes inherit it."""
    domain = unique_domain()
    monkeypatch.setenv('ROS_DOMAIN_ID', str(domain))
    return domain


@pytest.fixture
def ros_node(ros_domain):
    """An rclpy context + test node in the test's own domain."""
    import rclpy
    from rclpy.context import Context
    from rclpy.node import Node
    ctx = Context()
    rclpy.init(context=ctx, domain_id=ros_domain)
    node = Node('test_probe', context=ctx)
    try:
        yield node
    finally:
        node.destroy_node()
        rclpy.shutdown(context=ctx)
