"""The `main` every plain node shares: init, build, spin until Ctrl-C, clean up."""
import rclpy


def spin_node(node_cls, args=None) -> None:
    rclpy.init(args=args)
    node = None
    try:
        node = node_cls()
        rclpy.spin(node)
    except KeyboardInterrupt:
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
