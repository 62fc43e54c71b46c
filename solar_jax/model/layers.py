"""Small NNX building blocks: RMSNorm, projections, SwiGLU MLP, embedding.

Every parameter is an `nnx.Param` carrying `logical_axes` metadata (names from
solar_jax.sharding.LOGICAL_AXES, without the leading "layers" axis that the stack adds).
Parameters are stored in `param_dtype` and cast to `compute_dtype` where they are used.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from solar_jax.config import ModelConfig


def _dtype(name: str):
    return jnp.dtype(name)


def param(rngs: nnx.Rngs | None, shape, dtype, axes: tuple[str, ...], std: float | None):
    """A Param of `shape` (normal(std) init, or ones when std is None) tagged with axes."""
    if std is None:
        value = jnp.ones(shape, dtype)
    else:
        value = (std * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)
    return nnx.Param(value, logical_axes=axes)


class RMSNorm(nnx.Module):
    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.eps = config.rms_norm_eps
        self.scale = param(rngs, (config.hidden_size,), _dtype(config.param_dtype),
                           ("embed",), None)

    def __call__(self, x):
        # As transformers: normalize in fp32, cast back, then scale.
        xf = x.astype(jnp.float32)
        xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return self.scale[...].astype(x.dtype) * xf.astype(x.dtype)


class Projection(nnx.Module):
    """y = x · kernel contracting x's last `len(in_shape)` axes; kernel is in_shape + out_shape."""

    def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...],
                 axes: tuple[str, ...], config: ModelConfig, *, rngs: nnx.Rngs):
        self.n_in = len(in_shape)
        self.compute_dtype = _dtype(config.compute_dtype)
        self.kernel = param(rngs, (*in_shape, *out_shape), _dtype(config.param_dtype), axes,
                            config.initializer_range)

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
        return y.reshape(*lead, *out_shape)


class MLP(nnx.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        h, i = config.hidden_size, config.intermediate_size
        self.gate_proj = Projection((h,), (i,), ("embed", "mlp"), config, rngs=rngs)
        self.up_proj = Projection((h,), (i,), ("embed", "mlp"), config, rngs=rngs)
        self.down_proj = Projection((i,), (h,), ("mlp", "embed"), config, rngs=rngs)

    def __call__(self, x):
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class Embedding(nnx.Module):
    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.compute_dtype = _dtype(config.compute_dtype)
        self.embedding = param(rngs, (config.vocab_size, config.hidden_size),
                               _dtype(config.param_dtype), ("vocab", "embed"),
                               config.initializer_range)

    def __call__(self, input_ids):
        return jnp.take(self.embedding[...], input_ids, axis=0).astype(self.compute_dtype)

    def attend(self, x):
        """Tied LM head: logits against the embedding matrix, accumulated in fp32."""
        table = self.embedding[...].astype(self.compute_dtype)
        return jnp.einsum("bsh,vh->bsv", x, table, preferred_element_type=jnp.float32)
