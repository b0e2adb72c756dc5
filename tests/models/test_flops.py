"""Analytic training FLOPs agree with XLA's own count of the compiled gradient."""

import pytest

from maejax.models import flops, get_config


@pytest.mark.parametrize("name,channels", [("vit_tiny", 6), ("camae_tiny", 4)])
def test_analytic_flops_match_xla_cost_analysis(name, channels):
  cfg = get_config(name, width=128, mlp_dim=512, img_size=64, depth=2)
  analytic = flops.train_flops_per_example(cfg, 64, channels)
  xla = flops.xla_train_flops_per_example(cfg, 64, channels)
  # XLA also counts norms, softmax and elementwise ops, which the analytic count leaves out.
  assert 0.85 * xla < analytic <= 1.02 * xla


def test_flops_grow_with_unmasked_tokens():
  lo = flops.train_flops_per_example(get_config("vits16", mask_ratio=0.9))
  hi = flops.train_flops_per_example(get_config("vits16", mask_ratio=0.5))
  assert hi > lo
