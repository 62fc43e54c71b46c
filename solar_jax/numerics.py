"""Numeric constants shared by the model's attention and the Pallas kernels (a leaf: it
imports nothing from solar_jax, so kernels/ need not import model/)."""

import numpy as np

# The score a masked position gets: finite (so a fully masked row is not NaN after the
# softmax's max-subtraction) and far below any real score, in fp32 and bf16 alike.
MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)
