"""Fault suite: stopping the whole graph (a terminal's Ctrl-C, SIGTERM) while frames arrive.

The last command on cmd_vel must be zero, with the planner's stale-belief watchdog unable to
help (belief_timeout 30 s), and every process must exit 0 without a traceback. Each case has a
DDS domain of its own. docs/safety.md maps the cases to faults and bounds.
"""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from conftest import unique_domain
from faultkit import Probe, assert_clean_output, stop_process
from world_model_ctrl.paths import config_file
from world_model_ctrl.procs import ros_env



def _params_without_watchdog(tmp_path):
    params = yaml.safe_load(config_file('control.yaml').read_text())
    params['/**/planner']['ros__parameters']['belief_timeout'] = 30.0
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
        # `wmc up` says when the planner is up (after its start-up, the compile included)
        deadline = time.monotonic() + 30
        while 'wmc up: ready after' not in open(log.name).read():
            assert time.monotonic() < deadline, 'no "wmc up: ready" line'
            probe.spin(0.2)
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
    assert out.count('wmc up: ready after') == 1, out[-3000:]
    assert_clean_output(out)


def test_every_node_survives_a_signal_storm_and_exits_0(tmp_path):
    """What launch + a terminal do: SIGINT from both, then launch's SIGTERM, spread over the
    node's teardown (a second signal used to kill it at interpreter exit with code 130)."""

    from world_model_ctrl.procs import NodeSpec
    env = ros_env(unique_domain())
    nodes = {name: NodeSpec(module) for name, module in (
        ('room_sim', 'room_sim.node'), ('belief', 'world_model_ctrl.belief'),
        ('planner', 'world_model_ctrl.planner'),
        ('image_monitor', 'world_model_ctrl.image_monitor'))}
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


BAD_START = {
    'planner_rate_hz_0': ('world_model_ctrl.planner', ['-p', 'rate_hz:=0.0'],
                          'parameter rate_hz must be > 0, got 0.0'),
    'planner_negative_belief_timeout': ('world_model_ctrl.planner',
                                        ['-p', 'belief_timeout:=-1.0'],
                                        'parameter belief_timeout must be > 0, got -1.0'),
    'planner_negative_exploration_noise': ('world_model_ctrl.planner',
                                           ['-p', 'exploration_noise:=-0.1'],
                                           'exploration_noise must be >= 0'),
    'belief_turning_fields': ('world_model_ctrl.belief',
                              ['-p', "action_fields:=['linear.x','angular.q']"],
                              "action_fields ['angular.q'] are not Twist fields"),
    'room_sim_rate_hz_0': ('room_sim.node', ['-p', 'rate_hz:=0.0'],
                           'parameter rate_hz must be > 0, got 0.0'),
    'room_sim_answer_topic_realtime': ('room_sim.node', ['-p', 'answer_topic:=planner/answered'],
                                       "answer_topic ('planner/answered') is for mode lockstep"),
    'params_file_yaml_error': ('world_model_ctrl.planner', ['--params-file', '{bad_yaml}'],
                               "Couldn't parse params file"),
    # the shipped model was trained on linear.x/linear.y within 0.5 m/s (its checkpoint says)
    'planner_fields_not_trained': ('world_model_ctrl.planner',
                                   ['-p', "action_fields:=['linear.x','angular.z']"],
                                   "do not match the fields"),
    'belief_fields_not_trained': ('world_model_ctrl.belief',
                                  ['-p', "action_fields:=['linear.y','linear.x']"],
                                  "trained on: ['linear.x', 'linear.y']"),
    'planner_limit_above_trained': ('world_model_ctrl.planner',
                                    ['-p', 'action_limits:=[0.5,0.8]'],
                                    'linear.y: 0.8 > 0.5'),
    'planner_old_max_speed': ('world_model_ctrl.planner', ['-p', 'max_speed:=0.3'],
                              'max_speed was replaced by action_limits'),
    'belief_bad_image_reliability': ('world_model_ctrl.belief',
                                     ['-p', 'image_reliability:=lossy'],
                                     "image_reliability must be 'auto', 'reliable' or"),
}


@pytest.fixture(scope='module')
def bad_starts(tmp_path_factory):
    """Every BAD_START case started at once (each process pays torch's import): results."""
    bad_yaml = tmp_path_factory.mktemp('bad') / 'bad.yaml'
    bad_yaml.write_text('planner:\n  ros__parameters:\n    rate_hz: [1, 2\n')
    procs = {}
    for case, (module, ros_args, _) in BAD_START.items():
        argv = [sys.executable, '-m', module, '--ros-args',
                *[a.format(bad_yaml=bad_yaml) for a in ros_args]]
        procs[case] = subprocess.Popen(argv, env=ros_env(unique_domain()), text=True,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return {case: (p.wait(60), *p.communicate()) for case, p in procs.items()}


@pytest.mark.parametrize('case', sorted(BAD_START))
def test_bad_parameter_is_one_line_and_exit_2(case, bad_starts):
    returncode, stdout, stderr = bad_starts[case]
    assert returncode == 2
    assert BAD_START[case][2] in stderr
    errors = [ln for ln in stderr.splitlines() if 'cannot start' in ln]
    assert len(errors) == 1, stderr
    assert_clean_output(stdout + stderr)


def test_wmc_up_refuses_a_nan_checkpoint_before_starting_nodes(tmp_path):
    import torch

    from conftest import tiny_world_model
    from world_model_ctrl.checkpoint import FORMAT_VERSION
    model = tiny_world_model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    name = next(k for k in state if k.endswith('weight'))
    state[name][0] = float('nan')
    bad = tmp_path / 'nan.pt'
    torch.save({'format_version': FORMAT_VERSION, 'kind': 'ssm',
                'config': model.config.to_dict(), 'state_dict': state, 'extra': {}}, bad)
    run = subprocess.run([sys.executable, '-m', 'world_model_ctrl.cli', 'up', '--no-sim',
                          '--checkpoint', str(bad)], env=ros_env(unique_domain()),
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert name in run.stderr and 'non-finite' in run.stderr
    assert 'starting' not in run.stderr                 # no node was started
    assert_clean_output(run.stdout + run.stderr)


CRASHY_NODE = '''
from rclpy.node import Node
from world_model_ctrl.spin import run_node

class Crashy(Node):
    def __init__(self):
        super().__init__('crashy')
        self.ticks = 0
        self.create_timer(0.05, self.tick)

    def tick(self):
        self.ticks += 1
        raise RuntimeError(f'bug in tick {self.ticks}')

raise SystemExit(run_node(Crashy, on_stop=lambda n: print('ticks', n.ticks, flush=True)))
'''


def test_an_exception_in_a_callback_does_not_stop_the_node(tmp_path):
    proc = subprocess.Popen([sys.executable, '-c', CRASHY_NODE], env=ros_env(unique_domain()),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(4.0)                                     # start-up (1-3 s) + ticking
    assert proc.poll() is None, 'the node died of its callback:\n' + proc.communicate()[0]
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=20)[0]
    assert proc.returncode == 0
    assert 'callback failed: RuntimeError: bug in tick 1' in out
    ticks = int(out.split('ticks ')[-1].split()[0])
    assert ticks >= 10                  # it kept spinning after the first failure (20 Hz)


def test_explorer_interrupted_mid_recording_leaves_zero(tmp_path):
    """Recording drives the robot too: Ctrl-C of the explorer mid-episode ends on zero."""
    from world_model_ctrl.procs import NodeSpec
    domain = unique_domain()
    env = ros_env(domain)
    probe = Probe(domain)
    log = open(tmp_path / 'nodes.log', 'w+')
    sim = subprocess.Popen(NodeSpec('room_sim.node', {'mode': 'lockstep'}).argv(), env=env,
                           stdout=log, stderr=subprocess.STDOUT)
    explorer = subprocess.Popen(NodeSpec('world_model_ctrl.explorer', {
        'episodes': 100, 'steps': 50, 'progress': False, 'min_cmd_subscribers': 2}).argv(),
        env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        probe.until(lambda: sum(np.abs(c).sum() > 0 for _, c in probe.cmds) > 20, 90,
                    'the explorer to drive')
        explorer.send_signal(signal.SIGINT)
        probe.until(lambda: explorer.poll() is not None, 20, 'the explorer to exit')
        assert explorer.returncode == 0
        probe.spin(1.0)
        assert np.abs(probe.cmds[-1][1]).sum() == 0, f'last command {probe.cmds[-1][1]}'
    finally:
        for p in (explorer, sim):
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
                p.wait(20)
        probe.close()
    log.flush()
    assert_clean_output(open(log.name).read())
