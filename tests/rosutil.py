"""Helpers for tests over real DDS: spin a probe node until a condition holds."""
import time

import rclpy


def spin_until(node, cond, timeout=10.0, what='condition'):
    from rclpy.executors import SingleThreadedExecutor
    ex = SingleThreadedExecutor(context=node.context)
    ex.add_node(node)
    try:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise AssertionError(f'timed out after {timeout} s waiting for {what}')
            ex.spin_once(timeout_sec=0.05)
    finally:
        ex.remove_node(node)


def call(node, client, request, timeout=10.0):
    assert client.wait_for_service(timeout_sec=timeout), f'service {client.srv_name} not up'
    future = client.call_async(request)
    spin_until(node, future.done, timeout, f'response from {client.srv_name}')
    return future.result()


__all__ = ['spin_until', 'call', 'rclpy']
