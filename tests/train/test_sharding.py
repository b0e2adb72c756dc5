"""Mesh building, logical->mesh rules, and parameters initialised directly sharded."""

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from maejax import config as config_lib
from maejax.train import loop
from maejax.train import mesh as mesh_lib
from maejax.train import optimizer as optimizer_lib
from maejax.train import sharding as sharding_lib
from maejax.train import state as state_lib

RULES = config_lib.DEFAULT_SHARDING_RULES


def _mesh(data=-1, fsdp=1, tensor=1, **kw):
  return mesh_lib.make_mesh(ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor, **kw)))


def test_mesh_sizes_and_axis_types():
  m = _mesh(data=-1, fsdp=2, tensor=2)
  assert dict(m.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  assert all(t == jax.sharding.AxisType.Auto for t in m.axis_types)
  m = _mesh(data=1, fsdp=-1, axis_types="explicit")
  assert m.shape["fsdp"] == 8 and m.axis_types[0] == jax.sharding.AxisType.Explicit
  # Two "slices" of 4 devices: data spans them, the other axes stay inside one.
  m = _mesh(data=4, fsdp=2, dcn_data=2)
  assert dict(m.shape) == {"data": 4, "fsdp": 2, "tensor": 1}
  with pytest.raises(ValueError, match="do not split"):
    _mesh(data=-1, fsdp=3)
  with pytest.raises(ValueError, match="at most one -1"):
    _mesh(data=-1, fsdp=-1)
  with pytest.raises(ValueError, match="uses 4 devices but 8"):
    _mesh(data=2, fsdp=2)


def test_logical_to_spec():
  assert sharding_lib.logical_to_spec(("embed", "mlp"), RULES) == P("fsdp", "tensor")
  assert sharding_lib.logical_to_spec(("batch", None, "embed"), RULES) == P(("data", "fsdp"), None, None)
  assert sharding_lib.logical_to_spec(("embed", None, "heads", "kv"), RULES) == P("fsdp", None, "tensor", None)
  mesh = _mesh(data=2, fsdp=2, tensor=2)
  # 6 is not divisible by fsdp=4 -> replicated rather than an XLA error.
  mesh4 = _mesh(data=2, fsdp=4)
  assert sharding_lib.logical_to_spec(("embed",), RULES, (6,), mesh4) == P(None)
  assert sharding_lib.logical_to_spec(("embed",), RULES, (8,), mesh) == P("fsdp")
  with pytest.raises(ValueError, match="'mystery' has no entry in config.sharding_rules"):
    sharding_lib.logical_to_spec(("mystery",), RULES)


def test_vit_parameters_are_created_sharded_as_the_rules_say():
  mesh = _mesh(data=2, fsdp=2, tensor=2)
  config = config_lib.load_config("configs/demo.py")
  model_fn = loop.model_fn_for(config.model)
  tx = optimizer_lib.make_optimizer(config)
  spec = state_lib.make_spec(model_fn, tx, mesh, RULES)
  state = state_lib.init_state(model_fn, tx, spec, seed=0)
  blk = state["params"]["encoder"]["blocks"][0]
  expected = {  # (logical axes in maejax/models/layers.py) -> rules -> mesh axes
      ("mlp", "fc1", "kernel"): P("fsdp", "tensor"),  # (embed, mlp)
      ("mlp", "fc2", "kernel"): P("tensor", "fsdp"),  # (mlp, embed)
      ("attn", "qkv", "proj", "kernel"): P("fsdp", None, "tensor", None),  # (embed, None, heads, kv)
      ("attn", "out", "proj", "kernel"): P("tensor", None, "fsdp"),  # (heads, kv, embed)
      ("norm1", "scale"): P("fsdp"),  # (embed,)
  }
  for path, spec_ in expected.items():
    x = blk
    for k in path:
      x = x[k]
    assert x.sharding.spec == spec_, path
    assert x.sharding.mesh.shape == mesh.shape
    # Each device holds only its shard: no full host copy was placed on every device.
    shard = x.addressable_shards[0].data.shape
    for dim, axis in enumerate(spec_):
      if axis is not None:
        assert shard[dim] == x.shape[dim] // mesh.shape[axis]
  # Optimizer moments follow their parameters; counters are replicated.
  mu = state["opt_state"][1][0].mu["encoder"]["blocks"][0]["mlp"]["fc1"]["kernel"]
  assert mu.sharding.spec == P("fsdp", "tensor")
  assert state["step"].sharding.spec == P()
  assert spec.abstract["params"]["encoder"]["blocks"][0]["mlp"]["fc1"]["kernel"].sharding.spec == P("fsdp", "tensor")


def test_global_batch_from_host_data():
  mesh = _mesh(data=4, fsdp=2)
  local = {"image": np.arange(16 * 2 * 2 * 1, dtype=np.uint8).reshape(16, 2, 2, 1)}
  batch = sharding_lib.to_global_batch(local, mesh, RULES)
  assert batch["image"].shape == (16, 2, 2, 1)
  assert batch["image"].sharding.spec[0] == ("data", "fsdp")
  assert len({s.data.shape[0] for s in batch["image"].addressable_shards}) == 1
  np.testing.assert_array_equal(np.asarray(batch["image"]), local["image"])
