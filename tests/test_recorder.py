"""Recorder node over DDS: round trip into mcap and sqlite3 bags, clean close on SIGTERM."""
import signal

import numpy as np
import pytest
from rclpy.qos import QoSProfile
from rosbags.highlevel import AnyReader
from sensor_msgs.msg import Image
from std_msgs.msg import Float32

from rosutil import spin_until
from world_model_ctrl.bag_writer import BagWriter
from world_model_ctrl.procs import NodeGroup, NodeSpec


def read_bag(path):
    out = {}
    with AnyReader([path]) as reader:
        for conn, t, raw in reader.messages():
            out.setdefault(conn.topic, []).append((t, reader.deserialize(raw, conn.msgtype)))
        meta = {c.topic: c.msgtype for c in reader.connections}
    return out, meta


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_sigterm_mid_run_keeps_everything_received(ros_node, tmp_path, storage):
    bag = tmp_path / 'bag'
    group = NodeGroup()
    rec = group.start(NodeSpec('world_model_ctrl.recorder', {
        'output': str(bag), 'storage': storage, 'topics': ['/reward', '/camera/image_raw']}))
    try:
        qos = QoSProfile(depth=500)
        pub_r = ros_node.create_publisher(Float32, 'reward', qos)
        pub_i = ros_node.create_publisher(Image, 'camera/image_raw', qos)
        spin_until(ros_node, lambda: pub_r.get_subscription_count() > 0
                   and pub_i.get_subscription_count() > 0, timeout=20, what='recorder')
        frame = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
        for i in range(300):
            pub_r.publish(Float32(data=float(i)))
            if i % 10 == 0:
                img = Image(height=8, width=8, encoding='rgb8', step=24)
                img.header.frame_id = str(i)
                img.data = frame.tobytes()
                pub_i.publish(img)
        rec.send_signal(signal.SIGTERM)        # the sender keeps its data; the bag must too
        assert rec.wait(20) == 0
    finally:
        group.stop_all()
    msgs, types = read_bag(bag)
    assert types == {'/reward': 'std_msgs/msg/Float32',
                     '/camera/image_raw': 'sensor_msgs/msg/Image'}
    assert [m.data for _, m in msgs['/reward']] == [float(i) for i in range(300)]
    assert [m.header.frame_id for _, m in msgs['/camera/image_raw']] == \
        [str(i) for i in range(0, 300, 10)]
    img = msgs['/camera/image_raw'][0][1]
    np.testing.assert_array_equal(np.asarray(img.data).reshape(8, 8, 3), frame)
    times = [t for t, _ in msgs['/reward']]
    assert times == sorted(times)
    assert (bag / 'metadata.yaml').exists()


def test_bag_writer_refuses_to_overwrite_and_rejects_bad_input(tmp_path):
    with BagWriter(tmp_path / 'b', 'mcap') as w:
        w.add_topic('/x', 'std_msgs/msg/Float32')
        with pytest.raises(ValueError, match='unknown message type'):
            w.add_topic('/y', 'no_pkg/msg/Nothing')
    with pytest.raises(FileExistsError):
        BagWriter(tmp_path / 'b')
    with pytest.raises(ValueError, match='storage'):
        BagWriter(tmp_path / 'c', 'rosbag1')
