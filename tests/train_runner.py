"""Run `solar_jax.train` in a fresh process with N simulated CPU devices.

usage: python train_runner.py NUM_DEVICES [key=value ...]
Multi-process: pass distributed.* overrides; gloo provides the CPU collectives.
"""

import sys

import jax

jax.config.update("jax_num_cpu_devices", int(sys.argv[1]))
jax.config.update("jax_cpu_collectives_implementation", "gloo")

from solar_jax.cli import main  # noqa: E402

sys.exit(main(["train", *sys.argv[2:]]))
