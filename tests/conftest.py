"""Shared fixtures. ROS tests use real DDS in a domain of their own, on localhost only."""
import contextlib
import fcntl
import itertools
import os
import tempfile
from pathlib import Path

import pytest

os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
os.environ.setdefault('PYTHONUNBUFFERED', '1')
_counter = itertools.count()


def unique_domain() -> int:
    # Distinct per test; pytest-xdist workers (gw0, gw1) get disjoint halves of 1..200, and
    # the process id spreads separate test runs over the half.
    worker = os.environ.get('PYTEST_XDIST_WORKER', 'gw0')
    half = int(worker[2:]) % 2 if worker[2:].isdigit() else 0
    return 1 + 100 * half + (os.getpid() * 17 + next(_counter) * 7) % 100


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


@pytest.fixture(autouse=True, scope='session')
def _one_torch_thread():
    """2 shared cores: one torch thread per test process keeps timings predictable."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_world_model(**overrides):
    """The 'debug' world model at 16x16, seeded."""
    import torch

    from world_model_ctrl.ssm import SSMConfig, WorldModel
    torch.manual_seed(0)
    return WorldModel(SSMConfig.from_preset('debug', image_size=16, **overrides))


# What training records about the room's data (train_ssm): 10 Hz frames, vx/vy within 0.5 m/s.
ROOM_EXTRA = {'frame_interval_s': 0.1,
              'action': {'fields': ['linear.x', 'linear.y'], 'bounds': [0.5, 0.5]}}


@pytest.fixture(scope='session')
def tiny_ssm_ckpt(tmp_path_factory):
    """An (untrained) tiny world-model checkpoint for node tests."""
    path = tmp_path_factory.mktemp('ckpt') / 'tiny.pt'
    tiny_world_model().save(path, extra=ROOM_EXTRA)
    return path


@contextlib.contextmanager
def _cpu_lock(kind: int):
    """One lock file for the whole test run (all xdist workers): a test that loads every core
    on purpose holds it exclusively, tests that measure timing share it, so neither runs while
    the other does."""
    path = Path(tempfile.gettempdir()) / f'wmc-tests-cpu-{os.getuid()}.lock'
    with open(path, 'a') as f:
        fcntl.flock(f, kind)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@pytest.fixture
def timing_sensitive():
    """For tests with time or rate bounds: never alongside a test that loads every core."""
    with _cpu_lock(fcntl.LOCK_SH):
        yield


@pytest.fixture
def cpu_hog():
    """For a test that loads every core on purpose: alone among the timing-sensitive ones."""
    with _cpu_lock(fcntl.LOCK_EX):
        yield
