"""A small bag of real room_sim episodes, written without ROS (for training tests)."""
import numpy as np

from bagfactory import PERIOD, SIM0, T0, SynthBag
from room_sim.world import RoomWorld, WorldConfig
from world_model_ctrl.policies import make_policy


def world_bag(path, episodes: int = 6, steps: int = 20, image_size: int = 32, seed: int = 0,
              storage: str = 'mcap'):
    """Exploration episodes laid out as the recorder writes them (reward, frame, then command)."""
    cfg = WorldConfig(image_size=image_size)
    world = RoomWorld(cfg, seed=seed)
    policy = make_policy('mix', cfg.max_speed, seed + 1)
    bag = SynthBag(path, storage)
    k = 0
    for ep in range(episodes):
        frame = world.reset()
        policy.reset()
        bag.marker(T0 + k * PERIOD - 1000, SIM0 + k * PERIOD, ep)
        for t in range(steps + 1):
            bag.image(T0 + k * PERIOD, SIM0 + k * PERIOD, frame)
            bag.reward(T0 + k * PERIOD - 500, world.reward())
            if t < steps:
                a = policy.act(world.pos, world.goal)
                bag.cmd(T0 + k * PERIOD + 2000, float(a[0]), float(a[1]))
                frame, _, _ = world.step(a)
            k += 1
    return bag.write()


__all__ = ['world_bag', 'np']
