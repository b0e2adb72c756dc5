"""Ahead-of-time compiles for TPU slices (libtpu on a CPU host) and FSDP memory per chip."""

import logging

import jax
import ml_collections
import numpy as np
import pytest

from maejax import config as config_lib
from maejax import models
from maejax.cli import bench as cli
from maejax.train import aot
from maejax.train import loop
from maejax.train import mesh as mesh_lib
from maejax.train import optimizer as optimizer_lib
from maejax.train import state as state_lib


def _tiny(**model):
  c = config_lib.experiment("tiny", "vit_tiny", **model)
  c.mesh.data, c.mesh.fsdp = 2, 2
  c.batch_size, c.data.crop_size = 16, 32
  return c


def _attention_mxu_excess(model, crop=32):
  """Training FLOPs per example that XLA counts beyond the analytic count: the TPU attention
  kernel declares its 2 forward and 5 backward products as the MXU runs them (query length to
  8, key length and head_dim to 128); the analytic count has 3 x 2 products of exact sizes."""
  model = models.resolve(model)
  up = lambda n, m: -(-n // m) * m
  n = (crop // model.patch_size) ** 2
  stacks = ((model.depth, int(n * (1 - model.mask_ratio)) + 1, model.width, model.num_heads),
            (model.decoder_depth, n + 1, model.decoder_width, model.decoder_heads))
  return sum(depth * heads * (2 * 7 * up(l, 8) * up(l, 128) * up(w // heads, 128)
                              - 3 * 4 * l * l * (w // heads))
             for depth, l, w, heads in stacks)


@pytest.fixture(scope="module")
def v5e():
  return aot.topology("v5e:2x2")


def test_compile_vit_tiny_for_v5e_with_data_and_fsdp(v5e):
  r = aot.report(_tiny(scan_layers=False), v5e)
  t = r["train"]
  assert (r["chips"], r["device"], t["mesh"]) == (4, "TPU v5 lite", {"data": 2, "fsdp": 2, "tensor": 1})
  m = t["memory"]
  assert m["fits"] and m["hbm_gib"] == 16 and 0 < m["total_gib"] < 1 and 0.9 < m["margin"] < 1
  # The donated state is aliased to the new one: arguments ~ outputs ~ aliased.
  assert m["aliased_gib"] == pytest.approx(m["outputs_gib"], rel=0.1)
  expected = t["analytic_flops_per_chip"] + _attention_mxu_excess(_tiny().model) * 16 / 4
  assert 0.5 < t["xla_flops_per_chip"] / expected < 2
  assert t["cost_model"]["method"] == "direct" and 0 < t["cost_model_mfu"] < 1
  # FSDP gathers parameters; data parallelism reduces gradients.
  assert t["collectives"]["all-gather"]["count"] > 0 and t["collectives"]["all-reduce"]["bytes"] > 0
  assert r["embed"]["memory"]["fits"] and r["embed"]["xla_flops_per_chip"] > 0


def test_scanned_cost_model_matches_the_unrolled_step(v5e):
  """XLA counts a loop body once; the extrapolated estimate must equal the loop's count."""
  def tiny_vit(scan):
    return _tiny(depth=3, decoder_depth=2, scan_layers=scan)
  loop_r, scan_r = aot.compile_train(tiny_vit(False), v5e), aot.compile_train(tiny_vit(True), v5e)
  assert scan_r["cost_model"]["method"].startswith("unrolled")
  assert scan_r["xla_flops_per_chip"] == pytest.approx(loop_r["xla_flops_per_chip"], rel=0.02)
  assert scan_r["cost_model_step_s"] == pytest.approx(loop_r["cost_model_step_s"], rel=0.1)
  # Where the time goes: the block stacks and the rest, adding up to the whole step.
  parts = scan_r["cost_model"]["parts"]
  assert set(parts) == {"depth", "decoder_depth", "rest"}
  assert (parts["depth"]["blocks"], parts["decoder_depth"]["blocks"]) == (3, 2)
  assert sum(p["share"] for p in parts.values()) == pytest.approx(1.0)
  assert sum(p["xla_flops_per_chip"] for p in parts.values()) == pytest.approx(
      scan_r["xla_flops_per_chip"])
  # Each part's MFU is of its analytic FLOPs, which add up to the step's.
  assert sum(p["analytic_flops_per_chip"] for p in parts.values()) == pytest.approx(
      scan_r["analytic_flops_per_chip"])
  assert all(p["xla_flops_per_chip"] > 0 and 0 < p["mfu"] < 1 for p in parts.values())
  assert loop_r["cost_model"].get("parts") is None


def test_compile_command_prints_the_report_then_exit_2_when_it_does_not_fit(capsys, monkeypatch):
  monkeypatch.setitem(aot.HBM_GIB, "v5e", 1e-4)  # A chip far too small for the demo.
  argv = ["compile", "--config", "configs/demo.py", "--topology", "v5e:2x2", "--no-embed",
          "--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.batch_size=16", "--json"]
  assert cli.main(argv) == 2
  captured = capsys.readouterr()
  out, err = captured.out.strip().splitlines(), captured.err.strip().splitlines()
  assert "compiler cost-model estimate (not a measurement)" in "\n".join(out)
  assert '"bench": "compile"' in out[-1] and "DOES NOT FIT" in "\n".join(out)
  assert len(err) == 1 and "per chip on v5e:2x2" in err[0] and "--config.model.remat=true" in err[0]


def test_bad_topology_and_slices_are_one_line_errors(capsys):
  assert cli.main(["compile", "--config", "configs/demo.py", "--topology", "v9x:2x2"]) == 2
  assert "expected GENERATION:SHAPE" in capsys.readouterr().err
  assert cli.main(["compile", "--config", "configs/demo.py", "--topology", "v5e:2x2",
                   "--num-slices", "2"]) == 2
  assert "--config.mesh.dcn_data=2" in capsys.readouterr().err


def test_collectives_are_counted_from_hlo_text():
  hlo = """
  %ag = bf16[8,1024]{1,0} all-gather(bf16[1,1024]{1,0} %p), dimensions={0}
  %ar-start = (f32[256]{0}, f32[256]{0}) all-reduce-start(f32[256]{0} %g), to_apply=%add
  %ar-done = (f32[256]{0}, f32[256]{0}) all-reduce-done(%ar-start)
  %rs = f32[32,4]{1,0} reduce-scatter(f32[256,4]{1,0} %x), dimensions={0}
  """
  c = aot.collectives(hlo)
  assert c["all-gather"] == {"count": 1, "bytes": 8 * 1024 * 2}
  assert c["all-reduce"]["count"] == 1 and c["all-reduce"]["bytes"] == 2 * 256 * 4
  assert c["reduce-scatter"] == {"count": 1, "bytes": 32 * 4 * 4}
  assert c["all-to-all"]["count"] == 0


def _bytes_per_device(tree):
  return sum(int(np.prod(a.sharding.shard_shape(a.shape))) * a.dtype.itemsize
             for a in jax.tree.leaves(tree))


def test_fsdp_shards_parameters_and_optimizer_state_about_1_over_n(caplog):
  """On 8 devices, a ViT-B's parameters and optimizer moments per device are ~1/8 of the
  total: nothing big is accidentally replicated, and no dimension falls back."""
  config = config_lib.experiment("big", "vitb16")
  mesh = mesh_lib.make_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=8, tensor=1)))
  with caplog.at_level(logging.WARNING):
    spec = state_lib.make_spec(loop.model_fn_for(config.model),
                               optimizer_lib.make_optimizer(config), mesh,
                               config_lib.DEFAULT_SHARDING_RULES)
  for k in ("params", "opt_state"):
    total = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(spec.abstract[k]))
    assert _bytes_per_device(spec.abstract[k]) < 1.02 * total / 8, k
  assert "replicated instead of sharded" not in caplog.text


def test_indivisible_dimensions_are_counted_in_one_warning(caplog):
  config = config_lib.experiment("odd", "vit_tiny", width=36, num_heads=4, mlp_dim=72)
  mesh = mesh_lib.make_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=8, tensor=1)))
  with caplog.at_level(logging.WARNING):
    state_lib.make_spec(loop.model_fn_for(config.model), optimizer_lib.make_optimizer(config),
                        mesh, config_lib.DEFAULT_SHARDING_RULES)
  lines = [r for r in caplog.records if "replicated instead of sharded" in r.getMessage()]
  assert len(lines) == 1 and "embed 36 over fsdp (8)" in lines[0].getMessage()
