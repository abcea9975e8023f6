"""Recorder node: subscribe to any topics and write them to a rosbag2 (mcap or sqlite3).

Messages are taken serialised (raw) and written untouched. The log time is the publisher's send
time (``log_time: send``, default; system clock, ns; rosbag2's send_timestamp) or the time the
middleware received the message (``log_time: receive``, what `ros2 bag record` logs).
SIGINT or SIGTERM closes the bag cleanly after draining what is already queued. Killed outright
(SIGKILL, a crash), the bag stays readable and loses at most the last ~0.6 s: the writer flushes
at least every ``flush_period`` s (see ``bag_writer``). A message that cannot be written is
dropped with a throttled warning and recording goes on; a bag that cannot be written any more
(disk full) is reported as an error and the node exits with status 1 when stopped.

    recorder --ros-args -p output:=run1 -p topics:="['/camera/image_raw', '/reward', '/cmd_vel']"
"""
import importlib
import sys
import time

import rclpy
from rclpy.node import Node
from rclpy.qos import QoSProfile

from world_model_ctrl.bag_writer import BagWriteError, BagWriter
from world_model_ctrl.diagnostics import ERROR, OK, WARN, Diagnostics
from world_model_ctrl.spin import EXIT_BAD_CONFIG, init_owning_signals, shutdown_keeping_signals


def import_msg(msgtype: str):
    """'sensor_msgs/msg/Image' -> the rclpy message class."""
    pkg, _, name = msgtype.split('/')
    return getattr(importlib.import_module(f'{pkg}.msg'), name)


class RecorderNode(Node):
    """Writes every message on ``topics`` to the bag at ``output``."""

    def __init__(self, **kwargs):
        super().__init__('recorder', **kwargs)
        self.declare_parameter('output', 'rosbag2_out')
        self.declare_parameter('storage', 'mcap')
        self.declare_parameter('topics', ['/camera/image_raw', '/reward', '/cmd_vel'])
        # Optional 'topic:pkg/msg/Type' pairs; other topics get their type from the graph.
        self.declare_parameter('types', [''])
        self.declare_parameter('qos_depth', 1000)
        # Log time: 'send' = the publisher's send time, 'receive' = middleware reception time.
        self.declare_parameter('log_time', 'send')
        # Seconds between flushes to the OS: the most a kill of this process can lose.
        self.declare_parameter('flush_period', 0.5)
        p = self.get_parameter
        self.writer = BagWriter(p('output').value, p('storage').value,
                                flush_period=p('flush_period').value)
        self.dropped = 0
        self.qos = QoSProfile(depth=p('qos_depth').value)
        self.types = dict(t.rsplit(':', 1) for t in p('types').value if t)
        self.time_key = {'send': 'source_timestamp', 'receive': 'received_timestamp'}.get(
            p('log_time').value)
        if self.time_key is None:
            raise ValueError(f"log_time must be 'send' or 'receive', got {p('log_time').value!r}")
        self.pending = [self.resolve_topic_name(t) for t in p('topics').value]
        self.create_timer(0.05, self.subscribe_pending)
        self.create_timer(0.1, self._flush)      # also when messages stop coming
        self.diag = Diagnostics(self, hardware_id=str(p('output').value))
        self.create_timer(1.0, self.report)
        self.subscribe_pending()

    def report(self):
        """/diagnostics once a second: the messages written per topic (what a person or
        `wmc collect-planner --ros` checks before driving: every topic arrives)."""
        failed = self.writer.failed is not None
        waiting = list(self.pending)
        self.diag.publish(ERROR if failed else WARN if waiting else OK,
                          'cannot write the bag' if failed else
                          f'waiting for {", ".join(waiting)}' if waiting else 'recording',
                          {**self.writer.counts, 'dropped': self.dropped})

    def subscribe_pending(self):
        graph = dict(self.get_topic_names_and_types())
        still = []
        for topic in self.pending:
            msgtype = self.types.get(topic) or (graph.get(topic) or [None])[0]
            if msgtype is None:
                still.append(topic)      # not advertised yet: try again on the next tick
                continue
            try:
                cls = import_msg(msgtype)
                self.writer.add_topic(topic, msgtype)
            except BagWriteError as err:
                self._write_failed(err)
                still.append(topic)
                continue
            except Exception as err:    # no such type here: record the other topics
                self.get_logger().error(f'not recording {topic}: type {msgtype}: '
                                        f'{type(err).__name__}: {err}')
                continue
            self.create_subscription(cls, topic, self._callback(topic), self.qos, raw=True)
            self.get_logger().info(f'recording {topic} [{msgtype}]')
        self.pending = still

    def _callback(self, topic):
        def write(data: bytes, info):
            # Times from the middleware, not the time Python got round to the message: with a
            # backlog the executor takes topics in its own order. Send times order causally
            # related messages exactly on one machine (a command is sent before the frame it
            # causes); reception at the recorder can lag the sim's by more than a lockstep step.
            try:
                self.writer.write(topic, info[self.time_key] or time.time_ns(), data)
            except BagWriteError as err:
                self.dropped += 1
                self._write_failed(err)
            except Exception as err:    # one bad message never stops the recording
                self.dropped += 1
                self.get_logger().warning(
                    f'dropped a message on {topic} ({self.dropped} dropped so far): '
                    f'{type(err).__name__}: {err}', throttle_duration_sec=5.0)
        return write

    def _flush(self):
        try:
            self.writer.flush_if_due()
        except BagWriteError as err:
            self._write_failed(err)

    def _write_failed(self, err: BagWriteError):
        self.get_logger().error(f'{err} ({self.dropped} messages dropped so far)',
                                throttle_duration_sec=5.0)

    @property
    def ready(self) -> bool:
        return not self.pending


def main(args=None):
    # Own the signals: rclpy's default handler would shut the context before the bag is closed.
    stop = init_owning_signals(args)
    try:
        node = RecorderNode()
    except Exception as e:      # bad parameter, existing output: one line, no traceback
        print(f'[ERROR] [recorder]: cannot start: {e}', file=sys.stderr)
        shutdown_keeping_signals()
        return EXIT_BAD_CONFIG
    rc = 0
    try:
        while not stop.is_set():
            rclpy.spin_once(node, timeout_sec=0.1)
        # Drain what DDS has already delivered before closing: nothing received is lost.
        deadline = time.monotonic() + 3.0
        last, quiet_since = -1, time.monotonic()
        while time.monotonic() - quiet_since < 0.3 and time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.05)
            if sum(node.writer.counts.values()) != last:
                last, quiet_since = sum(node.writer.counts.values()), time.monotonic()
    finally:
        try:
            node.writer.close()
        except Exception as err:
            node.writer.failed = node.writer.failed or err
            node.get_logger().error(f'cannot close bag {node.writer.path}: '
                                    f'{type(err).__name__}: {err}')
        total = sum(node.writer.counts.values())
        if node.writer.failed is not None:
            rc = 1
            node.get_logger().error(f'{node.writer.failed}; {node.dropped} messages dropped')
        else:
            node.get_logger().info(f'closed {node.writer.path} with {total} messages'
                                   + (f' ({node.dropped} dropped)' if node.dropped else ''))
        node.destroy_node()
        shutdown_keeping_signals()
    return rc


if __name__ == '__main__':
    raise SystemExit(main())
