"""belief and planner nodes over real DDS (each node in its own process, isolated domain)."""
import time

import numpy as np
import pytest
import torch
from geometry_msgs.msg import Twist, TwistStamped
import rclpy.duration
from rclpy.qos import QoSProfile
from sensor_msgs.msg import Image
from std_msgs.msg import Bool, Header

from rosutil import spin_until
from world_model_ctrl.data import image_to_rgb
from world_model_ctrl.messages import belief_from_msg, belief_to_msg
from world_model_ctrl.procs import NodeGroup, NodeSpec
from world_model_ctrl.ssm import SSMConfig, WorldModel, images_to_tensor


def _spin_for(node, seconds):
    end = time.monotonic() + seconds
    spin_until(node, lambda: time.monotonic() > end, seconds + 5)


def frame(k, size=64, encoding='rgb8'):
    img = Image(height=size, width=size, encoding=encoding, step=size * 3)
    img.header.stamp.sec, img.header.stamp.nanosec = 100 + k, 0
    rgb = np.full((size, size, 3), (10 * k) % 256, np.uint8)
    rgb[: size // 3, (k % 4) * size // 8:, 0] = 255         # structure: a flip shows
    img.data = rgb.tobytes()
    return img


def _belief_node_up(ros_node, group, params, beliefs, pub):
    group.start(NodeSpec('world_model_ctrl.belief', params))
    spin_until(ros_node, lambda: pub.get_subscription_count() > 0, 30, 'belief node')
    spin_until(ros_node, lambda: ros_node.count_publishers('/belief') > 0, 30, 'belief pub')
    if params.get('image_reliability', 'auto') == 'auto':
        # a node that discovered this publisher late subscribed best effort first and then
        # switches (both subscriptions deliver for camera.OVERLAP_S: a frame twice is a
        # re-sent one in cmd_sync mode): wait until only a matching one is left
        want = pub.qos_profile.reliability
        spin_until(ros_node, lambda: {i.qos_profile.reliability for i in
                                      ros_node.get_subscriptions_info_by_topic(pub.topic_name)
                                      if i.node_name == 'belief'} == {want}, 30,
                   "the belief's camera subscription to follow this publisher's QoS")
    # Discovery is not symmetric: re-send a warm-up frame until the node has matched us.
    for _ in range(100):
        if beliefs:
            break
        pub.publish(frame(99))
        _spin_for(ros_node, 0.3)
    assert beliefs, 'the belief node never answered a frame'
    # A warm-up frame sent again before the first answer came is answered too (a re-sent
    # frame gets its belief again): let those arrive before the test counts beliefs.
    _spin_for(ros_node, 0.5)
    beliefs.clear()


def test_belief_publishes_one_belief_per_frame_with_its_stamp(ros_node, tiny_ssm_ckpt):
    beliefs = []
    ros_node.create_subscription(Image, 'belief', beliefs.append, QoSProfile(depth=100))
    pub = ros_node.create_publisher(Image, 'camera/image_raw', QoSProfile(depth=100))
    with NodeGroup() as group:
        # cmd_sync (lockstep) mode: a re-sent frame (same stamp) is recognised as such
        _belief_node_up(ros_node, group, {'checkpoint': str(tiny_ssm_ckpt), 'cmd_sync': True,
                                          'cmd_sync_timeout': 0.01}, beliefs, pub)
        for k in range(10):
            pub.publish(frame(k, size=48 if k % 2 else 64))    # any size is resized to 16
            spin_until(ros_node, lambda: len(beliefs) > k, 10, f'belief {k}')
        # A re-sent frame (same stamp) gets the same belief again, without a second update.
        pub.publish(frame(9, size=48))
        spin_until(ros_node, lambda: len(beliefs) > 10, 10, 'the re-sent belief')
        assert bytes(beliefs[10].data) == bytes(beliefs[9].data)
        del beliefs[10]
    assert [b.header.stamp.sec for b in beliefs] == [100 + k for k in range(10)]
    # The same filter run offline on the same frames (warm-up frame first, no commands).
    model = WorldModel.from_checkpoint(tiny_ssm_ckpt)
    h = None
    with torch.no_grad():
        for k, b in zip([99, *range(10)], [None, *beliefs]):
            img = frame(k, size=48 if k % 2 and k != 99 else 64)
            x = images_to_tensor(image_to_rgb(img, model.config.image_size)[None])
            h, mean, std = model.step(h, x, torch.zeros(1, model.config.action_dim))
            if b is not None:
                got_mean, got_std = belief_from_msg(b)
                np.testing.assert_allclose(got_mean, mean[0].numpy(), rtol=1e-5, atol=1e-6)
                np.testing.assert_allclose(got_std, std[0].numpy(), rtol=1e-5, atol=1e-6)


def test_belief_carries_memory_of_the_history(ros_node, tiny_ssm_ckpt):
    """The identical frame after two different histories gives two beliefs; the same history
    again gives the same belief (so the difference is memory, not noise)."""
    beliefs = []
    ros_node.create_subscription(Image, 'belief', beliefs.append, QoSProfile(depth=100))
    pub = ros_node.create_publisher(Image, 'camera/image_raw', QoSProfile(depth=100))
    reset = ros_node.create_publisher(Header, 'room_sim/episode_start', QoSProfile(depth=10))
    with NodeGroup() as group:
        _belief_node_up(ros_node, group, {'checkpoint': str(tiny_ssm_ckpt)}, beliefs, pub)
        stamp = iter(range(200, 300))

        def episode(values):
            reset.publish(Header())
            _spin_for(ros_node, 0.3)
            for v in values:
                img = frame(next(stamp) - 100)
                img.data = np.full((64, 64, 3), v, np.uint8).tobytes()
                n = len(beliefs)
                pub.publish(img)
                spin_until(ros_node, lambda: len(beliefs) > n, 10, 'a belief')
            return belief_from_msg(beliefs[-1])[0]
        a = episode([0, 250, 120])
        b = episode([250, 0, 120])
        a_again = episode([0, 250, 120])
    np.testing.assert_array_equal(a, a_again)
    assert np.abs(a - b).max() > 1e-3


def test_planner_acts_goes_to_zero_when_stale_or_stopped(ros_node, tiny_ssm_ckpt):
    """Shutdown (SIGINT, SIGTERM, a plan in flight, no watchdog to help) is in
    tests/test_faults_live.py and tests/test_faults_stop.py."""
    cmds = []
    ros_node.create_subscription(Twist, 'cmd_vel', cmds.append, QoSProfile(depth=1000))
    pub = ros_node.create_publisher(Image, 'belief', 10)
    stop = ros_node.create_publisher(Bool, 'planner/stop', 10)
    z = SSMConfig.from_preset('debug').latent_dim

    def feed(cond, what, timeout=10.0):
        """Beliefs every 50 ms until ``cond()`` (commands come at the planner's 20 Hz)."""
        def step():
            pub.publish(belief_to_msg(np.full(z, 0.5), np.full(z, 0.1), Header()))
            _spin_for(ros_node, 0.05)
            return cond()
        spin_until(ros_node, step, timeout, what)

    def speed(c):
        return abs(c.linear.x) + abs(c.linear.y)

    def moving():
        return any(speed(c) > 0 for c in cmds[-3:])
    with NodeGroup() as group:
        group.start(NodeSpec('world_model_ctrl.planner', {
            'checkpoint': str(tiny_ssm_ckpt), 'rate_hz': 20.0, 'belief_timeout': 0.3,
            'candidates': 50, 'iterations': 2, 'top_k': 5, 'horizon': 5}))
        spin_until(ros_node, lambda: pub.get_subscription_count() > 0
                   and len(cmds) > 3, 30, 'planner up and publishing')
        assert all(speed(c) == 0 for c in cmds)            # no belief yet: zero
        feed(moving, 'planning from fresh beliefs')
        n = len(cmds)
        spin_until(ros_node, lambda: len(cmds) > n + 12, 10, 'commands after beliefs stop')
        assert all(speed(c) == 0 for c in cmds[-4:])       # stale belief: zero
        stop.publish(Bool(data=True))
        feed(lambda: speed(cmds[-1]) == 0, 'the stop to take effect', 3.0)
        n = len(cmds)
        feed(lambda: len(cmds) > n + 6, 'commands while stopped')
        assert all(speed(c) == 0 for c in cmds[n - 1:])    # stop requested: zero throughout
        stop.publish(Bool(data=False))
        feed(moving, 'driving again after the release')
    # every command within the bound (the trained bound, 0.5 per axis) and finite
    arr = np.array([[c.linear.x, c.linear.y] for c in cmds])
    assert np.all(np.isfinite(arr)) and np.abs(arr).max() <= 0.5


def _ns(stamp) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


@pytest.mark.parametrize('offset_s', [-2.0, 2.0])
def test_stamped_commands_carry_the_publish_time_and_answered_the_frame(ros_node, tiny_ssm_ckpt,
                                                                       offset_s):
    """A camera 2 s behind (or ahead): cmd_vel is stamped when sent (a base controller with a
    0.5 s cmd_vel_timeout keeps every command), and planner/answered names exactly the frames,
    one command per belief, the same twist as on cmd_vel; watchdog zeros answer no frame."""
    # (message, DDS time: when the planner wrote a command, when an answer arrived here, ns)
    cmds, answered = [], []
    qos = QoSProfile(depth=1000)
    ros_node.create_subscription(TwistStamped, 'cmd_vel',
                                 lambda m, i: cmds.append((m, i['source_timestamp'])), qos)
    ros_node.create_subscription(TwistStamped, 'planner/answered',
                                 lambda m, i: answered.append((m, i['received_timestamp'])), qos)
    pub = ros_node.create_publisher(Image, 'camera/image_raw', QoSProfile(depth=100))
    sent = []

    def send():
        img = frame(len(sent))
        img.header.frame_id = 'cam'
        stamp = time.time_ns() + int(offset_s * 1e9)
        img.header.stamp.sec, img.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
        sent.append(stamp)
        pub.publish(img)
    with NodeGroup() as group:
        group.start(NodeSpec('world_model_ctrl.belief', {'checkpoint': str(tiny_ssm_ckpt)}))
        group.start(NodeSpec('world_model_ctrl.planner', {
            'checkpoint': str(tiny_ssm_ckpt), 'cmd_vel_stamped': True, 'trigger': 'belief',
            'rate_hz': 10.0, 'belief_timeout': 0.3,
            'candidates': 50, 'iterations': 2, 'top_k': 5, 'horizon': 5}))
        spin_until(ros_node, lambda: pub.get_subscription_count() > 0 and len(cmds) > 3, 30,
                   'belief up and planner publishing (watchdog zeros: no belief yet)')
        assert not answered, 'a watchdog zero went on planner/answered'
        for _ in range(100):       # discovery is not symmetric: until a frame is answered
            if answered:
                break
            send()
            _spin_for(ros_node, 0.3)
        assert answered, 'no command answered a frame'
        _spin_for(ros_node, 1.0)    # answers to warm-up frames still in flight land first
        for k in range(8):
            n = len(answered)
            _spin_for(ros_node, 0.2)   # a 5 Hz camera: slower than the model's 0.1 s step
            send()
            spin_until(ros_node, lambda: len(answered) > n, 10, f'the answer to frame {k}')
        measured = sent[-8:]
        _spin_for(ros_node, 0.5)   # watchdog zeros again (belief_timeout 0.3 s)
    got = [_ns(m.header.stamp) for m, _ in answered]
    assert got[-8:] == measured, 'planner/answered does not carry the frame stamps'
    assert set(got) <= set(sent) and len(got) == len(set(got)), 'one answer per frame'
    assert all(m.header.frame_id == 'cam' for m, _ in answered)
    # the stamp is the planner's clock when it published (the DDS source timestamp: delivery
    # delays on a loaded machine, e.g. a burst when the subscription matched, do not count)
    age = np.array([(sent - _ns(m.header.stamp)) / 1e9 for m, sent in cmds])
    assert np.all(np.abs(age) < 0.05), f'cmd_vel stamps off the publishing clock by {age}'
    twists = {(m.twist.linear.x, m.twist.linear.y) for m, _ in cmds}
    assert all((m.twist.linear.x, m.twist.linear.y) in twists for m, _ in answered)
    assert any(m.twist.linear.x or m.twist.linear.y for m, _ in answered)
    assert len(cmds) > len(answered), 'watchdog zeros are on cmd_vel'


def test_lockstep_planner_answers_per_frame_and_per_episode_deterministically(ros_node,
                                                                            tiny_ssm_ckpt):
    """trigger=belief: a re-sent belief (same frame stamp) gets the same answer and leaves the
    search state alone; an episode's answers depend on the seed and episode number only, not
    on how many plans ran before it (what makes `wmc eval` reproducible under load)."""
    answers = []
    ros_node.create_subscription(TwistStamped, 'planner/answered', answers.append,
                                 QoSProfile(depth=1000))
    pub = ros_node.create_publisher(Image, 'belief', QoSProfile(depth=100))
    reset = ros_node.create_publisher(Header, 'room_sim/episode_start', QoSProfile(depth=10))
    z = SSMConfig.from_preset('debug').latent_dim
    rng = np.random.default_rng(0)
    means = [rng.normal(size=z) for _ in range(4)]

    def send(k, mean, sec):
        n = len(answers)
        h = Header()
        h.stamp.sec = sec
        pub.publish(belief_to_msg(mean, np.full(z, 0.1), h))
        spin_until(ros_node, lambda: len(answers) > n, 10, f'the answer to belief {k}')
        a = answers[-1]
        assert a.header.stamp.sec == sec
        return (a.twist.linear.x, a.twist.linear.y)

    def episode(number, first_sec, extra_plans=0):
        reset.publish(Header(frame_id=str(number)))
        _spin_for(ros_node, 0.3)
        got = [send(k, m, first_sec + k) for k, m in enumerate(means)]
        for j in range(extra_plans):            # plans after the episode ended
            send(j, rng.normal(size=z), first_sec + 100 + j)
        return got
    with NodeGroup() as group:
        group.start(NodeSpec('world_model_ctrl.planner', {
            'checkpoint': str(tiny_ssm_ckpt), 'trigger': 'belief', 'belief_timeout': 5.0,
            'candidates': 50, 'iterations': 2, 'top_k': 5, 'horizon': 5, 'seed': 3}))
        spin_until(ros_node, lambda: pub.get_subscription_count() > 0
                   and ros_node.count_publishers('/planner/answered') > 0, 30, 'planner up')
        _spin_for(ros_node, 1.0)
        first = episode(7, 1000, extra_plans=3)
        # the same frame again: the same answer, and the next plan as if nothing happened
        reset.publish(Header(frame_id='8'))
        _spin_for(ros_node, 0.3)
        a0 = send(0, means[0], 2000)
        assert send(0, means[0], 2000) == a0
        assert send(0, means[0], 2000) == a0
        a1 = send(1, means[1], 2001)
        # episode 7 again after different histories: the same answers
        again = episode(7, 3000, extra_plans=5)
        other = episode(9, 4000)
        reset.publish(Header(frame_id='8'))
        _spin_for(ros_node, 0.3)
        b0, b1 = send(0, means[0], 5000), send(1, means[1], 5001)
    assert first == again
    assert (b0, b1) == (a0, a1)
    assert other != first           # another episode number: another sampling stream


def test_lockstep_belief_pairs_frames_with_their_answers_by_stamp(ros_node, tiny_ssm_ckpt):
    """cmd_sync with answer_topic: frame t is filtered with the answer to frame t-1 (by stamp;
    an answer to another frame is not it); after an episode start the last episode's frames
    that arrive late are not filtered into the new one; and a new episode's first frame that
    comes before its episode_start is filtered as the first when it comes."""
    beliefs = []
    ros_node.create_subscription(Image, 'belief', beliefs.append, QoSProfile(depth=100))
    pub = ros_node.create_publisher(Image, 'camera/image_raw', QoSProfile(depth=100))
    answer = ros_node.create_publisher(TwistStamped, 'planner/answered', QoSProfile(depth=10))
    reset = ros_node.create_publisher(Header, 'room_sim/episode_start', QoSProfile(depth=10))

    def fr(k):                          # frames 0.1 s apart in stamps (the model's step)
        img = frame(k)
        img.header.stamp.sec, img.header.stamp.nanosec = 100, k * 100_000_000
        return img

    def answer_to(k, vx, vy):
        msg = TwistStamped(header=fr(k).header)
        msg.twist.linear.x, msg.twist.linear.y = vx, vy
        answer.publish(msg)

    def start(k):
        h = Header(frame_id='1')
        h.stamp = fr(k).header.stamp
        reset.publish(h)
        _spin_for(ros_node, 0.3)
    with NodeGroup() as group:
        _belief_node_up(ros_node, group, {'checkpoint': str(tiny_ssm_ckpt), 'cmd_sync': True,
                                          'cmd_sync_timeout': 5.0,
                                          'answer_topic': 'planner/answered'}, beliefs, pub)
        start(0)
        pub.publish(fr(0))
        spin_until(ros_node, lambda: len(beliefs) == 1, 10, 'the first frame of the episode')
        pub.publish(fr(1))
        answer_to(7, 0.5, 0.5)             # answers another frame: not frame 1's cause
        _spin_for(ros_node, 1.0)
        assert len(beliefs) == 1
        answer_to(0, 0.3, -0.2)            # the answer to frame 0 caused frame 1
        spin_until(ros_node, lambda: len(beliefs) == 2, 10, 'frame 1 after its command')
        start(5)                           # next episode from frame 5 on
        answer_to(1, 0.4, 0.4)             # the last episode's trailing answer
        pub.publish(fr(2))                 # and its trailing frame, late
        _spin_for(ros_node, 1.0)
        assert len(beliefs) == 2
        pub.publish(fr(5))
        spin_until(ros_node, lambda: len(beliefs) == 3, 10, 'the new episode\'s first frame')
        # the next episode's first frame before its episode_start: held (no answer caused it),
        # then filtered as the first frame when the episode start comes
        pub.publish(fr(7))
        _spin_for(ros_node, 1.0)
        assert len(beliefs) == 3
        start(7)
        spin_until(ros_node, lambda: len(beliefs) == 4, 10, 'frame 7 after its episode_start')
    assert [b.header.stamp.nanosec // 100_000_000 for b in beliefs] == [0, 1, 5, 7]
    model = WorldModel.from_checkpoint(tiny_ssm_ckpt)

    def run(ks, actions):
        h = None
        with torch.no_grad():
            for k, a in zip(ks, actions):
                x = images_to_tensor(image_to_rgb(frame(k), model.config.image_size)[None])
                h, mean, _ = model.step(h, x, torch.tensor([a], dtype=torch.float32))
        return mean[0].numpy()
    np.testing.assert_allclose(belief_from_msg(beliefs[1])[0],
                               run([0, 1], [(0, 0), (0.3, -0.2)]), rtol=1e-5, atol=1e-6)
    for i, k in ((2, 5), (3, 7)):
        np.testing.assert_allclose(belief_from_msg(beliefs[i])[0], run([k], [(0, 0)]),
                                   rtol=1e-5, atol=1e-6)


def test_planner_compensates_latency_by_the_frames_age(ros_node, tiny_ssm_ckpt):
    """compensate_latency (trigger=timer): a belief is advanced by the steps (0.1 s) its frame
    is old when planned: beliefs stamped 250 ms ago take two or three more steps per plan than
    fresh ones (which age too while the planner re-plans from them, and on a loaded machine);
    one stamped 10 s ago (a camera clock that runs off) is not compensated and is counted."""
    from diagnostic_msgs.msg import DiagnosticArray
    pub = ros_node.create_publisher(Image, 'belief', 10)
    reports = []
    ros_node.create_subscription(DiagnosticArray, '/diagnostics', lambda m: reports.extend(
        {kv.key: kv.value for kv in s.values} for s in m.status
        if s.name.endswith('/planner')), 50)
    z = SSMConfig.from_preset('debug').latent_dim

    def feed(age_s, seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            h = Header()
            h.stamp = (ros_node.get_clock().now()
                       - rclpy.duration.Duration(nanoseconds=int(age_s * 1e9))).to_msg()
            pub.publish(belief_to_msg(np.full(z, 0.5), np.full(z, 0.1), h))
            _spin_for(ros_node, 0.03)

    def counts(age_s):
        """Feed beliefs of that age until the next planner report (once a second)."""
        n = len(reports)
        while len(reports) == n:
            feed(age_s, 0.03)
        r = reports[-1]
        return int(r['plans']), int(r['latency_steps']), int(r['latency_uncompensated'])
    with NodeGroup() as group:
        group.start(NodeSpec('world_model_ctrl.planner', {
            'checkpoint': str(tiny_ssm_ckpt), 'rate_hz': 20.0, 'belief_timeout': 0.5,
            'compensate_latency': True, 'candidates': 50, 'iterations': 2, 'top_k': 5,
            'horizon': 5}))
        spin_until(ros_node, lambda: pub.get_subscription_count() > 0, 30, 'planner up')
        feed(0.0, 1.0)                  # fresh frames (stamped now, planned within 30 ms)
        p0, s0, u0 = counts(0.0)
        p1, s1, u1 = counts(0.0)
        feed(0.25, 0.2)
        p2, s2, u2 = counts(0.25)       # frames 250-300 ms old when planned
        p2b, s2b, u2b = counts(0.25)
        feed(10.0, 0.2)                 # a camera clock 10 s behind
        p3, s3, u3 = counts(10.0)
        p3b, s3b, u3b = counts(10.0)
    fresh, old = (s1 - s0) / (p1 - p0), (s2b - s2) / (p2b - p2)
    assert p1 - p0 >= 10 and p2b - p2 >= 10 and u1 == u0 and u2b == u2
    assert fresh + 1.5 <= old <= 3, (fresh, old)
    assert p3b - p3 >= 10 and s3b == s3 and u3b - u3 >= 0.8 * (p3b - p3), (p3, u3, p3b, u3b)
