"""The `main` every node shares: init, build, spin until SIGINT/SIGTERM, clean up, exit code.

rclpy's own signal handler shuts the context down inside the signal and a second Ctrl-C
(terminal + launch both send one) raises KeyboardInterrupt wherever the main thread happens to
be, e.g. inside ``destroy_node()``. Here the signals only set an event: the spin loop ends,
``on_stop`` runs (the planner's final zero), and the node is torn down with the context still
valid, however many signals arrive. A node that cannot start (bad parameter, missing or bad
checkpoint) logs one line and exits with code 2, without a traceback.
"""
from __future__ import annotations

import signal
import sys
import threading
import time
from typing import Callable, Optional

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.signals import SignalHandlerOptions

EXIT_BAD_CONFIG = 2


class StartInterrupted(BaseException):
    """SIGINT/SIGTERM while the node was still being built: the start is abandoned."""


def init_owning_signals(args=None, starting: Optional[threading.Event] = None
                        ) -> threading.Event:
    """rclpy.init without its signal handlers; SIGINT and SIGTERM (any number) set the event.
    While ``starting`` is set, the first signal also raises StartInterrupted in the main
    thread: a node busy starting (the planner compiling its search, up to a minute) stops
    then and there instead of outliving its launcher's patience and being killed.
    Raises what rclpy.init raises (e.g. a params file with a YAML syntax error)."""
    stop = threading.Event()

    def handler(*_):
        stop.set()
        if starting is not None and starting.is_set():
            starting.clear()
            raise StartInterrupted()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    return stop


def shutdown_keeping_signals() -> None:
    """rclpy.try_shutdown without putting rclpy's (default) handlers back: a second signal
    must not kill the process, nor one during interpreter exit, when Python restores the
    default handlers of any it set (so they are ignored from here on)."""
    rclpy.try_shutdown(uninstall_handlers=False)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


def run_node(node_cls, args=None, on_stop: Optional[Callable] = None) -> int:
    """Run ``node_cls()`` until SIGINT/SIGTERM; returns the process exit code."""
    starting = threading.Event()
    try:
        stop = init_owning_signals(args, starting)
    except Exception as e:
        print(f'[ERROR] cannot start: {_one_line(e)}', file=sys.stderr)
        return EXIT_BAD_CONFIG
    node = executor = None
    try:
        try:
            starting.set()
            node = node_cls()
            starting.clear()
        except StartInterrupted:    # nothing was published yet: nothing to stop
            print(f'[INFO] [{node_cls.__module__}]: stopped while starting', file=sys.stderr)
            return 0
        except Exception as e:      # configuration errors: one clear line, no traceback
            print(f'[ERROR] [{node_cls.__module__}]: cannot start: {_one_line(e)}',
                  file=sys.stderr)
            return EXIT_BAD_CONFIG
        finally:
            starting.clear()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        while not stop.is_set() and rclpy.ok():
            try:
                executor.spin_once(timeout_sec=0.1)
            except Exception as e:  # a callback's bug must not take the node (and robot) down
                node.get_logger().error(f'callback failed: {_one_line(e)}',
                                        throttle_duration_sec=5.0)
        if on_stop is not None:
            on_stop(node)
        return 0
    finally:
        if executor is not None:
            executor.shutdown(timeout_sec=5.0)
        if node is not None:
            node.destroy_node()
        shutdown_keeping_signals()


def with_message_info(callback: Callable) -> Callable:
    """``callback(msg, info)`` as a subscription callback: rclpy passes the MessageInfo where it
    can (Iron and later); elsewhere info is None."""
    from rclpy.subscription import Subscription
    if hasattr(Subscription, 'CallbackType'):
        return callback
    return lambda msg: callback(msg, None)


def arrival_time(info) -> float:
    """time.monotonic() at which the middleware received a message, from its MessageInfo.

    A busy executor may take a message long after it arrived; an age counted from then would
    let a controller act on data older than its timeout. The wall-clock delay since reception
    is subtracted; if the wall clock jumped back it is taken as zero (the message's age is then
    counted from now), if it jumped forward the message looks older: both err on the safe side.
    """
    now = time.monotonic()
    received = (info or {}).get('received_timestamp', 0)
    if not received:
        return now
    return now - max(0.0, (time.time_ns() - received) / 1e9)


def require_positive(name: str, value) -> None:
    """Start-up check of a parameter that divides or times something."""
    if not value > 0:
        raise ValueError(f'parameter {name} must be > 0, got {value}')


def _one_line(e: BaseException) -> str:
    text = (str(e).strip().splitlines() or [''])[0]
    if isinstance(e, (ValueError, FileNotFoundError)):
        return text or type(e).__name__
    return f'{type(e).__name__}: {text}'
