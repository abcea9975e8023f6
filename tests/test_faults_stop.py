"""Fault suite: stopping the whole graph (a terminal's Ctrl-C, SIGTERM) while frames arrive.

The last command on cmd_vel must be zero, with the planner's stale-belief watchdog unable to
help (belief_timeout 30 s), and every process must exit 0 without a traceback. Each case has a
DDS domain of its own. docs/safety.md maps the cases to faults and bounds.
"""
import os
import signal
import subprocess
import sys

import numpy as np
import yaml

from conftest import unique_domain
from faultkit import Probe, assert_clean_output, stop_process
from world_model_ctrl.paths import config_file
from world_model_ctrl.procs import ros_env


def _params_without_watchdog(tmp_path):
    params = yaml.safe_load(config_file('control.yaml').read_text())
    params['planner']['ros__parameters']['belief_timeout'] = 30.0
    path = tmp_path / 'control.yaml'
    path.write_text(yaml.safe_dump(params))
    return path


def _wmc_up(args, domain, tmp_path):
    log = open(tmp_path / 'up.log', 'w+')
    env = {**ros_env(domain)}
    proc = subprocess.Popen([sys.executable, '-m', 'world_model_ctrl.cli', 'up', *args],
                            env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    return proc, log


def test_wmc_up_ctrl_c_to_the_group_while_frames_arrive(tmp_path):
    """A terminal's Ctrl-C: SIGINT to every process of the group, frames still coming."""
    domain = unique_domain()
    probe = Probe(domain)
    proc, log = _wmc_up(['--no-sim', '--monitor', '--params', str(_params_without_watchdog(
        tmp_path))], domain, tmp_path)
    try:
        probe.camera(15.0)
        probe.wait_moving(90, 'wmc up to drive on the camera frames')
        probe.spin(0.5)
        assert stop_process(proc, signal.SIGINT, group=True, timeout=30) == 0
        probe.spin(1.0)
        assert probe.frames_sent > 0 and np.abs(probe.cmds[-1][1]).sum() == 0, \
            f'last command {probe.cmds[-1][1]} is not zero'
        probe.assert_safe(0.5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        probe.close()
    log.flush()
    out = open(log.name).read()
    assert out.count('stopped: published zero velocity') == 1
    assert_clean_output(out)


def test_wmc_up_sigterm_with_the_sim(tmp_path):
    """SIGTERM to `wmc up` alone (a service manager); the sim keeps sending frames meanwhile."""
    domain = unique_domain()
    probe = Probe(domain)
    proc, log = _wmc_up(['--params', str(_params_without_watchdog(tmp_path))], domain, tmp_path)
    try:
        probe.wait_moving(90, 'wmc up to drive the sim')
        probe.spin(0.5)
        assert stop_process(proc, signal.SIGTERM, timeout=30) == 0
        probe.spin(1.0)
        assert np.abs(probe.cmds[-1][1]).sum() == 0, f'last command {probe.cmds[-1][1]}'
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        probe.close()
    log.flush()
    out = open(log.name).read()
    assert 'stopped: published zero velocity' in out
    assert_clean_output(out)


def test_every_node_survives_a_signal_storm_and_exits_0(tmp_path):
    """What launch + a terminal do: SIGINT from both, then launch's SIGTERM, spread over the
    node's teardown (a second signal used to kill it at interpreter exit with code 130)."""
    import time

    from world_model_ctrl.procs import NodeSpec
    env = ros_env(unique_domain())
    nodes = {name: NodeSpec(module) for name, module in (
        ('room_sim', 'room_sim.node'), ('belief', 'world_model_ctrl.belief'),
        ('planner', 'world_model_ctrl.planner'), ('image_monitor', 'world_model_ctrl.image_monitor'))}
    procs, logs = {}, {}
    for name, spec in nodes.items():
        logs[name] = open(tmp_path / f'{name}.log', 'w+')
        procs[name] = subprocess.Popen(spec.argv(), env=env, stdout=logs[name],
                                       stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while not all('[INFO]' in open(logs[n].name).read() for n in nodes if n != 'room_sim'):
            assert time.monotonic() < deadline, 'nodes did not start'
            assert all(p.poll() is None for p in procs.values()), 'a node died at start'
            time.sleep(0.2)
        time.sleep(1.0)                     # room_sim (which logs nothing) is up by now too
        for sig, pause in ((signal.SIGINT, 0.15), (signal.SIGINT, 0.35), (signal.SIGTERM, 0.5)):
            for p in procs.values():
                if p.poll() is None:
                    p.send_signal(sig)
            time.sleep(pause)
        codes = {name: p.wait(20) for name, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    assert codes == dict.fromkeys(nodes, 0)
    for name in nodes:
        assert_clean_output(open(logs[name].name).read())
