"""world_model_ctrl: learned world-model control from a camera."""
