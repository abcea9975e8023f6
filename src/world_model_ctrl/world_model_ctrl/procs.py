"""Start ROS 2 nodes as child processes (what `ros2 run` would do) and stop them cleanly."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field


def ros_env(domain_id: int | None = None) -> dict:
    """The caller's environment, with discovery kept on this host and the shipped Fast DDS
    profile for large camera frames (camera.py), unless the user chose otherwise."""
    from world_model_ctrl.camera import PROFILE_ENV, fastdds_profile
    env = dict(os.environ)
    env.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    env.setdefault(PROFILE_ENV, fastdds_profile())
    env.setdefault('PYTHONUNBUFFERED', '1')
    if domain_id is not None:
        env['ROS_DOMAIN_ID'] = str(domain_id)
    return env


def fully_qualified_namespace(ns: str | None) -> str:
    """'robot1', '/robot1' and '/robot1/' -> '/robot1'; '' and '/' -> '/' (what launch_ros does
    with a relative namespace at the top level of a launch file)."""
    ns = (ns or '').strip().strip('/')
    return '/' + ns


@dataclass
class NodeSpec:
    """One node: its Python module (with a ``main``), parameters, remappings, params files."""

    module: str
    params: dict = field(default_factory=dict)
    remaps: dict = field(default_factory=dict)
    params_files: list = field(default_factory=list)
    name: str | None = None
    namespace: str = ''

    def argv(self) -> list[str]:
        args = [sys.executable, '-m', self.module, '--ros-args']
        if self.name:
            args += ['-r', f'__node:={self.name}']
        ns = fully_qualified_namespace(self.namespace)
        if ns != '/':
            args += ['-r', f'__ns:={ns}']       # rcl refuses a relative __ns
        for f in self.params_files:
            args += ['--params-file', str(f)]
        for k, v in self.params.items():
            args += ['-p', f'{k}:={json.dumps(v)}']    # JSON is valid YAML for ROS params
        for k, v in self.remaps.items():
            args += ['-r', f'{k}:={v}']
        return args


class NodeGroup:
    """Child node processes that are stopped (SIGINT, then SIGTERM, then SIGKILL) on exit."""

    def __init__(self, env: dict | None = None, quiet: bool = False, output=None):
        """``quiet``: discard the nodes' output; ``output``: a file that gets it all."""
        self.env = env or ros_env()
        self.quiet = quiet
        self.output = output
        self.procs: list[tuple[NodeSpec, subprocess.Popen]] = []

    def start(self, spec: NodeSpec) -> subprocess.Popen:
        if self.output is not None:
            out, err = self.output, subprocess.STDOUT
        else:
            out = err = subprocess.DEVNULL if self.quiet else None
        proc = subprocess.Popen(spec.argv(), env=self.env, stdout=out, stderr=err)
        self.procs.append((spec, proc))
        return proc

    def check_alive(self) -> None:
        for spec, proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f'node {spec.name or spec.module} exited early with code '
                                   f'{proc.returncode}')

    @staticmethod
    def stop(proc: subprocess.Popen, timeout: float = 10.0) -> int:
        for sig, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, 3.0)):
            if proc.poll() is not None:
                break
            proc.send_signal(sig)
            try:
                proc.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        if proc.poll() is None:
            proc.kill()
        return proc.wait()

    def stop_all(self) -> dict:
        """Stop every node, last started first; {name: exit code}."""
        codes = {spec.name or spec.module: self.stop(proc) for spec, proc in reversed(self.procs)}
        self.procs.clear()
        return codes

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop_all()


def wait_for(cond, timeout: float, what: str, poll: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f'timed out after {timeout:.0f} s waiting for {what}')
        time.sleep(poll)
