"""A throwaway NNX model with the maejax model contract: with a key-independent mask it
checks gradient accumulation exactly (the registry models always draw masks from the key)."""

import jax
import jax.numpy as jnp
from flax import nnx

_init = nnx.initializers.lecun_normal()


def _linear(din, dout, axes, rngs):
  return nnx.Linear(din, dout, rngs=rngs,
                    kernel_init=nnx.with_partitioning(_init, axes),
                    bias_init=nnx.with_partitioning(nnx.initializers.zeros, (axes[1],)))


class TinyMAE(nnx.Module):
  """Patchify -> MLP -> predict masked patches. images uint8 [B, H, W, C]."""

  def __init__(self, *, rngs, patch=4, channels=2, dim=16, hidden=32, mask_ratio=0.5,
               fixed_mask=False):
    pdim = patch * patch * channels
    self.patch, self.mask_ratio, self.fixed_mask = patch, mask_ratio, fixed_mask
    self.embed_proj = _linear(pdim, dim, (None, "embed"), rngs)
    self.fc1 = _linear(dim, hidden, ("embed", "mlp"), rngs)
    self.fc2 = _linear(hidden, dim, ("mlp", "embed"), rngs)
    self.norm = nnx.LayerNorm(dim, rngs=rngs,
                              scale_init=nnx.with_partitioning(nnx.initializers.ones, ("embed",)),
                              bias_init=nnx.with_partitioning(nnx.initializers.zeros, ("embed",)))
    self.head = _linear(dim, pdim, ("embed", None), rngs)

  def _patches(self, images):
    b, h, w, c = images.shape
    p = self.patch
    x = images.astype(jnp.float32) / 255.0
    x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // p) * (w // p), p * p * c)

  def compute_loss(self, batch, key):
    target = self._patches(batch["image"])
    if self.fixed_mask:  # Every other patch, independent of the key.
      mask = jnp.broadcast_to(jnp.arange(target.shape[1]) % 2 == 0, target.shape[:2])
    else:
      mask = jax.random.uniform(key, target.shape[:2]) < self.mask_ratio
    x = jnp.where(mask[..., None], 0.0, target)
    h = self.embed_proj(x)
    h = h + self.fc2(jax.nn.gelu(self.fc1(self.norm(h))))
    pred = self.head(h)
    err = ((pred - target) ** 2).mean(-1)
    loss = (err * mask).sum() / jnp.maximum(mask.sum(), 1)
    return loss, {"mse_visible": (err * ~mask).sum() / jnp.maximum((~mask).sum(), 1)}
