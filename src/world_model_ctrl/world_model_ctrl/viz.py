"""Pictures for people: camera GIFs with the driven trajectory, distance-to-goal plots."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def trajectory_gif(episodes: Sequence[tuple[np.ndarray, np.ndarray]], path: str | Path,
                   scale: int = 4, fps: int = 10) -> Path:
    """Write a GIF of camera frames (T, H, W, 3) with each episode's track drawn so far.

    ``episodes`` holds (frames, track) pairs; track is (T, 2) pixel (column, row) positions of
    the robot in the frames' coordinates.
    """
    from PIL import Image, ImageDraw
    images = []
    for frames, track in episodes:
        pts = [(float(c) * scale, float(r) * scale) for c, r in np.asarray(track)]
        for t, frame in enumerate(frames):
            im = Image.fromarray(np.asarray(frame, np.uint8)).resize(
                (frame.shape[1] * scale, frame.shape[0] * scale), Image.NEAREST)
            if t > 0:
                ImageDraw.Draw(im).line(pts[:t + 1], fill=(0, 200, 255), width=2)
            images.append(im)
        if images:
            images.extend([images[-1]] * max(1, fps // 2))    # pause between episodes
    if not images:
        raise ValueError('no frames to write')
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps),
                   loop=0, optimize=False)
    return path


def distance_plot(distances: Sequence[Sequence[float]], path: str | Path, dt: float,
                  success_radius: float | None = None, labels: Sequence[str] | None = None,
                  title: str = 'distance to goal') -> Path:
    """Plot one distance-to-goal curve (metres per step) per episode."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    for i, d in enumerate(distances):
        t = np.arange(len(d)) * dt
        ax.plot(t, d, label=labels[i] if labels else None, lw=1.5)
    if success_radius is not None:
        ax.axhline(success_radius, color='k', ls='--', lw=1, label='success radius')
    ax.set_xlabel('time (s)')
    ax.set_ylabel('distance to goal (m)')
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if labels or success_radius is not None:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
