"""Recorder node over DDS: round trip into mcap and sqlite3 bags, clean close on SIGTERM."""
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticStatus
from geometry_msgs.msg import Twist
from rclpy.qos import QoSProfile
from rclpy.serialization import serialize_message
from rosbags.highlevel import AnyReader
from sensor_msgs.msg import Image
from std_msgs.msg import Float32

from rosutil import spin_until
from world_model_ctrl.bag_writer import BagWriter
from world_model_ctrl.data import bag_summary, bag_to_episodes
from world_model_ctrl.procs import NodeGroup, NodeSpec, ros_env


def recorder_status(node) -> list:
    """The recorder's /diagnostics statuses, as they come."""
    from diagnostic_msgs.msg import DiagnosticArray
    got = []
    node.create_subscription(DiagnosticArray, '/diagnostics', lambda m: got.extend(
        st for st in m.status if st.name.endswith('/recorder')), 10)
    return got


def test_diagnostics_count_what_is_written_and_name_a_topic_never_advertised(ros_node,
                                                                             tmp_path):
    diag = recorder_status(ros_node)
    with NodeGroup() as group:
        group.start(NodeSpec('world_model_ctrl.recorder', {
            'output': str(tmp_path / 'bag'), 'topics': ['/reward', '/never']}))
        pub = ros_node.create_publisher(Float32, 'reward', QoSProfile(depth=10))
        spin_until(ros_node, lambda: pub.get_subscription_count() > 0, timeout=20,
                   what='recorder')
        for i in range(5):
            pub.publish(Float32(data=float(i)))
        spin_until(ros_node, lambda: diag and {v.key: v.value for v in diag[-1].values}.get(
            '/reward') == '5', timeout=10, what='a status counting 5 rewards')
    assert diag[-1].level == DiagnosticStatus.WARN
    assert diag[-1].message == 'waiting for /never'


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


# --- killed recordings ---------------------------------------------------------------------------

RATE_HZ = 50


def _record_then_sigkill(ros_node, bag, storage, run_s=2.5):
    """Publish cmd/reward/frame steps at RATE_HZ to a recorder, SIGKILL it mid-stream.

    Returns ({step: publish wall time ns}, kill wall time ns).
    """
    group = NodeGroup()
    rec = group.start(NodeSpec('world_model_ctrl.recorder', {
        'output': str(bag), 'storage': storage,
        'topics': ['/reward', '/camera/image_raw', '/cmd_vel']}))
    sent = {}
    try:
        qos = QoSProfile(depth=500)
        pubs = [ros_node.create_publisher(Twist, 'cmd_vel', qos),
                ros_node.create_publisher(Float32, 'reward', qos),
                ros_node.create_publisher(Image, 'camera/image_raw', qos)]
        spin_until(ros_node, lambda: all(p.get_subscription_count() > 0 for p in pubs),
                   timeout=20, what='recorder')
        frame = np.full((16, 16, 3), 7, np.uint8).tobytes()    # small: no chunk fills up
        start = time.monotonic()
        i = 0
        while time.monotonic() - start < run_s:
            cmd = Twist()
            cmd.linear.x = 0.1
            pubs[0].publish(cmd)
            pubs[1].publish(Float32(data=float(i)))
            img = Image(height=16, width=16, encoding='rgb8', step=48, data=frame)
            img.header.frame_id = str(i)
            img.header.stamp.sec, img.header.stamp.nanosec = divmod(i * 20_000_000, 10**9)
            pubs[2].publish(img)
            sent[i] = time.time_ns()
            i += 1
            time.sleep(max(0.0, start + i / RATE_HZ - time.monotonic()))
        killed_ns = time.time_ns()
        rec.send_signal(signal.SIGKILL)
        assert rec.wait(10) == -signal.SIGKILL
    finally:
        group.stop_all()
    return sent, killed_ns


def _check_killed_bag(bag, storage, sent, killed_ns):
    """Readable by bag_summary, bag_to_episodes and rosbags; nothing sent >1 s before the kill
    is missing. Returns the seconds lost before the kill."""
    summary = bag_summary(bag)
    assert summary['storage'] == storage
    counts = {t['name']: t['count'] for t in summary['topics']}
    episodes = bag_to_episodes(bag)
    assert sum(len(e) for e in episodes) > 0
    msgs, _ = read_bag(bag)               # a standard reader (rosbags) on the directory
    rewards = {int(m.data) for _, m in msgs['/reward']}
    frames = {int(m.header.frame_id) for _, m in msgs['/camera/image_raw']}
    assert counts == {'/reward': len(rewards), '/camera/image_raw': len(frames),
                      '/cmd_vel': len(msgs['/cmd_vel'])}
    must = {i for i, t in sent.items() if t <= killed_ns - 1_000_000_000}
    assert len(must) >= RATE_HZ          # the stream ran more than a second before the kill
    assert must <= rewards, f'lost rewards {sorted(must - rewards)}'
    assert must <= frames, f'lost frames {sorted(must - frames)}'
    assert sum(len(e) for e in episodes) >= len(must) - 1
    lost_s = (killed_ns - sent[max(rewards & frames)]) / 1e9
    print(f'{storage}: killed after {len(sent)} steps, {len(rewards)} rewards kept, '
          f'{lost_s:.2f} s lost before the kill')
    return lost_s


def test_sigkill_mid_stream_mcap_bag_stays_readable(ros_node, tmp_path):
    bag = tmp_path / 'bag'
    sent, killed_ns = _record_then_sigkill(ros_node, bag, 'mcap')
    _check_killed_bag(bag, 'mcap', sent, killed_ns)


def test_sigkill_mid_stream_sqlite3_bag_stays_readable(ros_node, tmp_path):
    bag = tmp_path / 'bag'
    sent, killed_ns = _record_then_sigkill(ros_node, bag, 'sqlite3')
    _check_killed_bag(bag, 'sqlite3', sent, killed_ns)


def test_malformed_messages_are_recorded_raw_and_never_stop_the_recorder(ros_node, tmp_path):
    bag = tmp_path / 'bag'
    group = NodeGroup()
    rec = group.start(NodeSpec('world_model_ctrl.recorder', {
        'output': str(bag), 'topics': ['/reward', '/camera/image_raw']}))
    garbage = [b'\x00\x01', b'\xff' * 7, b'\x00\x01\x00\x00\xde\xad']   # <= Float32's max size
    junk_image = b'\x00\x01\x00\x00' + bytes(range(255, -1, -1)) * 4        # lengths make no sense
    try:
        qos = QoSProfile(depth=500)
        pub_r = ros_node.create_publisher(Float32, 'reward', qos)
        pub_i = ros_node.create_publisher(Image, 'camera/image_raw', qos)
        spin_until(ros_node, lambda: pub_r.get_subscription_count() > 0
                   and pub_i.get_subscription_count() > 0, timeout=20, what='recorder')
        for raw in garbage:                     # not CDR of a Float32 at all
            pub_r.publish(raw)
        pub_i.publish(junk_image)
        bad = Image(height=480, width=640, encoding='no-such-encoding', step=3, data=b'abc')
        pub_i.publish(bad)                      # well-formed CDR, nonsense image
        for i in range(50):
            pub_r.publish(Float32(data=float(i)))
        time.sleep(0.5)
        assert rec.poll() is None, 'recorder died'
        rec.send_signal(signal.SIGTERM)
        assert rec.wait(20) == 0
    finally:
        group.stop_all()
    with AnyReader([bag]) as reader:            # raw: the recorder never decodes
        raw = {}
        for conn, _, data in reader.messages():
            raw.setdefault(conn.topic, []).append(bytes(data))
        # the middleware pads payloads to 4 bytes; the bytes themselves are kept as they came
        assert [d[:len(g)] for d, g in zip(raw['/reward'], garbage)] == garbage
        assert [reader.deserialize(d, 'std_msgs/msg/Float32').data for d in raw['/reward'][3:]] \
            == [float(i) for i in range(50)]
        assert raw['/camera/image_raw'][0][:len(junk_image)] == junk_image
        assert reader.deserialize(raw['/camera/image_raw'][1],
                                  'sensor_msgs/msg/Image').encoding == 'no-such-encoding'


def test_exception_while_writing_drops_only_that_message(ros_node, tmp_path):
    from rclpy.parameter import Parameter

    from world_model_ctrl.recorder import RecorderNode
    bag = tmp_path / 'bag'
    node = RecorderNode(context=ros_node.context, parameter_overrides=[
        Parameter('output', value=str(bag)), Parameter('topics', value=['/reward']),
        Parameter('types', value=['/reward:std_msgs/msg/Float32'])])
    try:
        write = node._callback('/reward')
        info = {'source_timestamp': 10**18, 'received_timestamp': 10**18 + 1}
        good = serialize_message(Float32(data=1.0))
        write(good, info)
        write(good, {})                         # no times: KeyError inside the callback
        write(None, info)                       # not bytes: TypeError inside the writer
        write(good, dict(info, source_timestamp=10**18 + 5))
        assert node.dropped == 2
        assert node.writer.counts == {'/reward': 2}
    finally:
        node.writer.close()
        node.destroy_node()
    assert bag_summary(bag)['message_count'] == 2


def test_write_error_is_reported_and_the_recorder_keeps_running(ros_domain, ros_node, tmp_path):
    """A bag file that cannot grow (here RLIMIT_FSIZE; a full disk alike): the recorder logs a
    clear error, keeps running, exits 1 when stopped, and the bag keeps what was flushed."""
    import resource
    bag = tmp_path / 'bag'
    limit = 200_000

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    spec = NodeSpec('world_model_ctrl.recorder', {'output': str(bag),
                                                  'topics': ['/camera/image_raw']})
    diag = recorder_status(ros_node)
    rec = subprocess.Popen(spec.argv(), env=ros_env(ros_domain), stderr=subprocess.PIPE,
                           text=True, preexec_fn=small_files)
    try:
        pub = ros_node.create_publisher(Image, 'camera/image_raw', QoSProfile(depth=500))
        spin_until(ros_node, lambda: pub.get_subscription_count() > 0, timeout=20,
                   what='recorder')
        for i in range(40):                     # 12 kB each: past the limit after 16
            img = Image(height=64, width=64, encoding='rgb8', step=192, data=bytes(12288))
            img.header.frame_id = str(i)
            pub.publish(img)
            if i % 10 == 9:
                time.sleep(0.7)                 # a flush after every 10
        time.sleep(0.2)
        assert rec.poll() is None, 'recorder died on a write error'
        spin_until(ros_node, lambda: diag and diag[-1].level == DiagnosticStatus.ERROR,
                   timeout=10, what='an ERROR status on /diagnostics')
        assert diag[-1].message == 'cannot write the bag'
        rec.send_signal(signal.SIGTERM)
        _, err = rec.communicate(timeout=20)
    finally:
        if rec.poll() is None:
            rec.kill()
            rec.wait()
    assert rec.returncode == 1, err
    assert f'cannot write to bag {bag}' in err and 'File too large' in err, err
    assert bag_summary(bag)['message_count'] > 0


def test_mcap_cut_in_the_middle_of_a_write_reads_up_to_the_last_whole_chunk(tmp_path):
    """What a kill during a flush leaves: the file up to any byte of the chunk being written."""
    w = BagWriter(tmp_path / 'bag', 'mcap')
    w.add_topic('/reward', 'std_msgs/msg/Float32')
    w.add_topic('/cmd_vel', 'geometry_msgs/msg/Twist')
    ends = []                                   # (file size before the flush's chunk, messages)
    for k in range(4):
        ends.append((w._tail.cut.tail_at, 20 * k))
        for i in range(10):
            t = 10**18 + (20 * k + i) * 10**7
            w.write('/reward', t, serialize_message(Float32(data=float(20 * k + i))))
            w.write('/cmd_vel', t - 5 * 10**6, serialize_message(Twist()))   # out of order
        w.flush()
    ends.append((w._tail.cut.tail_at, 80))
    data = (tmp_path / 'bag' / 'bag.mcap').read_bytes()
    meta = (tmp_path / 'bag' / 'metadata.yaml').read_bytes()
    w.close()
    for (start, n), (stop, _) in zip(ends, ends[1:]):
        for cut in (start, start + 1, start + 9, (start + stop) // 2, stop - 17, stop - 1, stop):
            bag = tmp_path / f'cut{cut}' / 'bag'
            if bag.exists():
                continue
            bag.mkdir(parents=True)
            (bag / 'bag.mcap').write_bytes(data[:cut])
            (bag / 'metadata.yaml').write_bytes(meta)
            expect = n + 20 if cut == stop else n     # a chunk counts once its indexes are whole
            assert bag_summary(bag)['message_count'] == expect, cut
    last = tmp_path / f'cut{ends[-1][0]}' / 'bag'
    assert {t['name']: t['count'] for t in bag_summary(last)['topics']} == \
        {'/reward': 40, '/cmd_vel': 40}


def test_sqlite3_killed_in_the_middle_of_a_commit_reads_the_commit_before(tmp_path):
    """A kill while a commit writes its pages: database file half new, journal still there."""
    bag = tmp_path / 'bag'
    script = f'''
import os, shutil
from rclpy.serialization import serialize_message
from std_msgs.msg import Float32
from world_model_ctrl.bag_writer import BagWriter
w = BagWriter({str(bag)!r}, 'sqlite3', flush_period=60)
w.add_topic('/reward', 'std_msgs/msg/Float32')
for i in range(2000):
    if i == 100:
        w.flush()                           # commit 1: 100 messages
    w.write('/reward', 10**18 + i, serialize_message(Float32(data=float(i))))
shutil.copyfile({str(bag / 'bag.db3-journal')!r}, {str(tmp_path / 'journal')!r})
w._writer.storage.conn.commit()             # commit 2, then killed
os._exit(0)
'''
    subprocess.run([sys.executable, '-c', script], check=True)
    db = bag / 'bag.db3'
    # the state during commit 2: its last page not written yet, its journal not yet deleted
    db.write_bytes(db.read_bytes()[:-4096])
    shutil.copyfile(tmp_path / 'journal', bag / 'bag.db3-journal')
    before = db.read_bytes()
    with pytest.raises(Exception, match='malformed'):
        read_bag(bag)                       # rosbags reads the file as it is
    assert bag_summary(bag)['message_count'] == 100
    assert db.read_bytes() == before and (bag / 'bag.db3-journal').exists()   # bag untouched
