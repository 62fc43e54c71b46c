"""Small NNX building blocks: RMSNorm, projections, SwiGLU MLP, embedding.

Parameters are stored in `param_dtype` and cast to `compute_dtype` where they are used.
Their names, HF/GGUF counterparts and logical axes are not declared here but in the
family's parameter table (solar_jax/arch/), which tests check against these modules.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from solar_jax.config import ModelConfig


def _dtype(name: str):
    return jnp.dtype(name)


def param(rngs: nnx.Rngs | None, shape, dtype, std: float | None):
    """A Param of `shape`: normal(std) init, ones when std is None, zeros when std is 0."""
    if std is None:
        value = jnp.ones(shape, dtype)
    elif std == 0:
        value = jnp.zeros(shape, dtype)
    else:
        value = (std * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)
    return nnx.Param(value)


class RMSNorm(nnx.Module):
    """RMSNorm over the last axis, of `size` (default hidden_size; Qwen3's q/k norms take
    head_dim)."""

    def __init__(self, config: ModelConfig, size: int | None = None, *, rngs: nnx.Rngs):
        self.eps = config.rms_norm_eps
        self.scale = param(rngs, (size or config.hidden_size,), _dtype(config.param_dtype), None)

    def __call__(self, x):
        # As transformers: normalize in fp32, cast back, then scale.
        xf = x.astype(jnp.float32)
        xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return self.scale[...].astype(x.dtype) * xf.astype(x.dtype)


class Projection(nnx.Module):
    """y = x · kernel (+ bias) contracting x's last `len(in_shape)` axes; kernel is
    in_shape + out_shape, the bias (zeros at init, as transformers') out_shape."""

    def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...],
                 config: ModelConfig, *, bias: bool = False, rngs: nnx.Rngs):
        self.n_in = len(in_shape)
        self.compute_dtype = _dtype(config.compute_dtype)
        self.kernel = param(rngs, (*in_shape, *out_shape), _dtype(config.param_dtype),
                            config.initializer_range)
        if bias:
            self.bias = param(rngs, tuple(out_shape), _dtype(config.param_dtype), 0)

    def __call__(self, x):
        # One 2-D matmul [tokens, in] @ [in, out]: XLA's CPU backend runs a rank-4
        # dot_general (and its transposed backward forms) about 20% slower than the same
        # product flattened, and the reshapes are free (they merge adjacent dims whose
        # major one carries the sharding).
        kernel = self.kernel[...].astype(self.compute_dtype)
        in_shape, out_shape = kernel.shape[:self.n_in], kernel.shape[self.n_in:]
        lead = x.shape[:x.ndim - self.n_in]
        flat = x.astype(self.compute_dtype).reshape(-1, math.prod(in_shape))
        y = flat @ kernel.reshape(math.prod(in_shape), math.prod(out_shape))
        if hasattr(self, "bias"):
            y = y + self.bias[...].astype(self.compute_dtype).reshape(-1)
        return y.reshape(*lead, *out_shape)


class MLP(nnx.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        h, i = config.hidden_size, config.intermediate_size
        self.gate_proj = Projection((h,), (i,), config, rngs=rngs)
        self.up_proj = Projection((h,), (i,), config, rngs=rngs)
        self.down_proj = Projection((i,), (h,), config, rngs=rngs)

    def __call__(self, x):
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class Embedding(nnx.Module):
    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.compute_dtype = _dtype(config.compute_dtype)
        self.embedding = param(rngs, (config.vocab_size, config.hidden_size),
                               _dtype(config.param_dtype), config.initializer_range)

    def __call__(self, input_ids):
        return jnp.take(self.embedding[...], input_ids, axis=0).astype(self.compute_dtype)

