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
# Planners (nodes and `wmc eval --no-ros`) search eagerly in tests: compiling at every one of
# their many starts, on as many tiny models, would take minutes. torch's own switch, read when
# torch is imported (here, before any test imports it; child nodes inherit it). The compiled
# search is tested in test_compiled_search.py, which turns it back on.
os.environ['TORCH_COMPILE_DISABLE'] = '1'
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


def _lock_path(name: str) -> Path:
    return Path(tempfile.gettempdir()) / f'wmc-tests-{name}-{os.getuid()}.lock'


@contextlib.contextmanager
def _cpu_lock(exclusive: bool):
    """One lock for the whole test run (all xdist workers, any concurrent run of this user): a
    test marked ``alone`` holds it exclusively, every other test shares it. A gate taken
    exclusively around each acquisition queues the tests in arrival order, so a waiting
    ``alone`` test is not starved by the other worker's stream of shared holders."""
    with open(_lock_path('gate'), 'a') as gate, open(_lock_path('cpu'), 'a') as cpu:
        fcntl.flock(gate, fcntl.LOCK_EX)
        try:
            fcntl.flock(cpu, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        finally:
            fcntl.flock(gate, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(cpu, fcntl.LOCK_UN)


def pytest_configure(config):
    config.addinivalue_line(
        'markers', 'alone: runs with no other test of the run alongside (xdist workers wait): '
        'tests that load every core on purpose, and rate or delivery bounds that other '
        "tests' CPU load would decide instead of the code")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    # around setup, call and teardown, so a module fixture that trains is covered too
    with _cpu_lock(exclusive=item.get_closest_marker('alone') is not None):
        yield
