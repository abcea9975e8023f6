"""The optional views belief/reconstruction and planner/imagined: the helpers."""

import numpy as np
import pytest
import torch
from std_msgs.msg import Header

from conftest import tiny_world_model
from world_model_ctrl.views import (ImageView, imagined, reconstruction, rgb8_msg, tile_row,
                                    to_rgb8)


# -- helpers (no node process) -----------------------------------------------------------
def test_tile_row_puts_the_frames_side_by_side_in_order():
    frames = np.arange(4 * 3 * 5 * 3, dtype=np.uint8).reshape(4, 3, 5, 3)    # (N, H, W, C)
    row = tile_row(frames)
    assert row.shape == (3, 20, 3) and row.flags['C_CONTIGUOUS']
    for k in range(4):
        np.testing.assert_array_equal(row[:, 5 * k:5 * (k + 1)], frames[k])
    with pytest.raises(ValueError, match='N >= 1'):
        tile_row(frames[:0])
    with pytest.raises(ValueError, match='N, H, W, C'):
        tile_row(frames[0])


def test_to_rgb8_clamps_rounds_and_survives_nan():
    x = torch.tensor([-1.0, 0.0, 0.5, 1.0, 2.0, float('nan')]).view(1, 1, 6).expand(3, 1, 6)
    rgb = to_rgb8(x)                                                       # (3, S, S) -> (S, S, 3)
    assert rgb.shape == (1, 6, 3) and rgb.dtype == np.uint8
    assert rgb[0, :, 0].tolist() == [0, 0, 128, 255, 255, 0]


def test_rgb8_msg_layout():
    rgb = np.random.default_rng(0).integers(0, 256, (4, 7, 3), dtype=np.uint8)
    msg = rgb8_msg(rgb, Header(frame_id='cam'))
    assert (msg.encoding, msg.height, msg.width, msg.step) == ('rgb8', 4, 7, 21)
    assert msg.header.frame_id == 'cam' and bytes(msg.data) == rgb.tobytes()
    with pytest.raises(ValueError, match='uint8'):
        rgb8_msg(rgb.astype(np.float32), Header())


def test_reconstruction_and_imagined_decode_the_mean_path():
    model = tiny_world_model().eval()
    S, Z, A, H = model.config.image_size, model.config.latent_dim, model.config.action_dim, 5
    mean = torch.randn(Z)
    actions = torch.rand(H, A) - 0.5
    rec = reconstruction(model, mean)
    assert rec.shape == (S, S, 3) and rec.dtype == np.uint8
    with torch.no_grad():
        np.testing.assert_array_equal(rec, to_rgb8(model.decode(mean[None]))[0])
        z = model.imagine(mean[None], actions[None], sample=False)[0]          # (H, Z)
        want = to_rgb8(model.decode(z))                                        # (H, S, S, 3)
    row = imagined(model, mean.numpy(), actions.numpy())                       # numpy in is fine
    assert row.shape == (S, H * S, 3)
    np.testing.assert_array_equal(row, tile_row(want))
    assert not np.array_equal(row[:, :S], row[:, -S:])     # the frames follow the plan


def test_view_rate_must_be_positive():
    for bad in (0.0, -1.0, float('nan')):
        with pytest.raises(ValueError, match='imagined_rate_hz must be > 0'):
            ImageView(None, 'planner/imagined', 'imagined', False, bad)


def test_view_rate_limit_by_clock(ros_node):
    now = [100.0]
    view = ImageView(ros_node, 'v', 'v', True, 2.0, clock=lambda: now[0])
    renders = []

    def render():
        renders.append(now[0])
        return np.zeros((2, 2, 3), np.uint8)
    for k in range(20):                             # frames at 10 Hz for 2 s
        now[0] = 100.0 + k / 10
        view.publish(render, Header())
    # one image per 0.5 s, and nothing rendered in between
    assert renders == [100.0, 100.5, 101.0, 101.5]
    assert view.diagnostics()['v_published'] == 4 and 'v_ms' in view.diagnostics()
    off = ImageView(ros_node, 'w', 'w', False, 2.0)
    assert not off.publish(render, Header()) and len(renders) == 4 and off.diagnostics() == {}
    assert ros_node.count_publishers('w') == 0
