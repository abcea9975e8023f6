"""One way for the nodes to report on /diagnostics (diagnostic_msgs, what rqt_runtime_monitor,
Foxglove and diagnostic_aggregator read): a status per node, its level and key/value pairs."""
from __future__ import annotations

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

OK, WARN, ERROR = DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR


class Diagnostics:
    """``publish(level, message, values)`` -> one DiagnosticArray on the global /diagnostics."""

    def __init__(self, node, hardware_id: str = ''):
        self.node = node
        # the node's full name: two robots (namespaces) share the one /diagnostics topic
        self.name = f'world_model_ctrl: {node.get_fully_qualified_name()}'
        self.hardware_id = hardware_id
        self.pub = node.create_publisher(DiagnosticArray, '/diagnostics', 10)

    def publish(self, level, message: str, values: dict) -> None:
        status = DiagnosticStatus(level=level, name=self.name, message=message,
                                  hardware_id=self.hardware_id)
        status.values = [KeyValue(key=k, value=v if isinstance(v, str) else f'{v:.6g}')
                         for k, v in values.items()]
        diag = DiagnosticArray(status=[status])
        diag.header.stamp = self.node.get_clock().now().to_msg()
        self.pub.publish(diag)
