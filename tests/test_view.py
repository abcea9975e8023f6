"""`wmc view` / room_sim.worlds.view_at: the frame of the robot standing at a pose (issue 14's
goal views), in both worlds."""
import subprocess
import sys

import cv2
import numpy as np
import pytest

from room_sim.worlds import make_world, view_at


def test_view_is_the_frame_the_world_shows_with_the_robot_there():
    over = view_at('overhead', [0.6, 1.4])
    world = make_world('overhead', seed=3)
    world.reset()
    world.pos = np.array([0.6, 1.4])
    np.testing.assert_array_equal(over, world.render())
    assert not np.array_equal(over, view_at('overhead', [1.4, 0.6]))
    # onboard: the heading is part of the view (a forward camera)
    east, north = view_at('onboard', [1.0, 1.0, 0.0]), view_at('onboard', [1.0, 1.0, 1.57])
    assert east.shape == (64, 64, 3) and east.dtype == np.uint8
    assert np.mean(east != north) > 0.1
    onb = make_world('onboard', seed=5)
    np.testing.assert_array_equal(onb.reset(start=[1.0, 1.0, 0.0]), east)
    # the goal marker where asked
    assert not np.array_equal(view_at('overhead', [0.6, 1.4], goal=[1.5, 1.5]), over)


@pytest.mark.parametrize('world, pose, match', [
    ('overhead', [5.0, 1.0], 'off the floor'),
    ('overhead', [1.0, 1.0, 0.0], 'pose of 2 finite numbers'),
    ('onboard', [1.0, 1.0], 'x y heading'),
    ('onboard', [1.0, float('nan'), 0.0], 'finite'),
])
def test_a_pose_off_the_floor_or_malformed_is_refused(world, pose, match):
    with pytest.raises(ValueError, match=match):
        view_at(world, pose)


def test_cli_writes_the_view_as_an_image_file(tmp_path):
    out = tmp_path / 'goal.png'
    r = subprocess.run([sys.executable, '-m', 'world_model_ctrl.cli', 'view', '--world',
                        'onboard', '--at', '1.2', '0.8', '0.5', '--size', '32', '--out', str(out)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    got = cv2.cvtColor(cv2.imread(str(out)), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(got, view_at('onboard', [1.2, 0.8, 0.5], {'image_size': 32}))
    bad = subprocess.run([sys.executable, '-m', 'world_model_ctrl.cli', 'view', '--at', '9', '9',
                          '--out', str(tmp_path / 'x.png')], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode != 0 and 'off the floor' in bad.stderr and 'Traceback' not in bad.stderr
