"""Training: config, optimizer, loss, sharded state, checkpoints, metrics and the loop."""

from solar_jax.train.config import TrainConfig, load_train_config
from solar_jax.train.loop import train

__all__ = ["TrainConfig", "load_train_config", "train"]
