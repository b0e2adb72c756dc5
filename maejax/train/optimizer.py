"""Optimizer: Lion or AdamW (betas 0.9/0.95), masked weight decay, warm-up + cosine, clipping."""

import optax
import jax

# Learned tokens/position tables get no weight decay (nor does any 0-/1-d parameter:
# biases, norm scales), as in MAE's param_groups_weight_decay.
_NO_DECAY_NAMES = ("pos_embed", "pos_embedding")


def schedule(config) -> optax.Schedule:
  """Linear warm-up over `warmup_frac` of `total_steps`, then cosine to `lr * min_lr_frac`."""
  total = max(int(config.total_steps), 1)
  warmup = int(round(float(config.warmup_frac) * total))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=float(config.lr), warmup_steps=warmup,
      decay_steps=max(total, warmup + 1), end_value=float(config.lr) * float(config.min_lr_frac))


def decay_mask(params):
  """True where weight decay applies: matrices/kernels, not biases, norms or tokens."""
  def decays(path, leaf):
    names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
    if getattr(leaf, "ndim", 0) < 2:
      return False
    return not any(n.endswith("token") or n in _NO_DECAY_NAMES for n in names)
  return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(config) -> optax.GradientTransformation:
  """The optimizer the config names; the learning rate follows `schedule(config)`."""
  lr = schedule(config)
  name = str(config.optimizer).lower()
  if name == "lion":
    opt = optax.lion(lr, b1=config.b1, b2=config.b2, weight_decay=config.weight_decay,
                     mask=decay_mask)
  elif name == "adamw":
    opt = optax.adamw(lr, b1=config.b1, b2=config.b2, weight_decay=config.weight_decay,
                      mask=decay_mask)
  else:
    raise ValueError(f"config.optimizer={config.optimizer!r}: expected 'lion' or 'adamw'.")
  if float(config.grad_clip_norm) > 0:
    opt = optax.chain(optax.clip_by_global_norm(float(config.grad_clip_norm)), opt)
  return opt
