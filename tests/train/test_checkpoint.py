"""Checkpoints restore onto a different mesh; an unreadable latest falls back to the previous."""

import os

import jax
import ml_collections
import numpy as np
import pytest

from maejax.train import checkpoint as checkpoint_lib
from maejax import config as config_lib
from maejax.train import loop
from maejax.train import mesh as mesh_lib
from maejax.train import optimizer as optimizer_lib
from maejax.train import state as state_lib

RULES = config_lib.DEFAULT_SHARDING_RULES


def _setup(config, **mesh):
  mesh = mesh_lib.make_mesh(ml_collections.ConfigDict(mesh))
  model_fn = loop.model_fn_for(config.model)
  tx = optimizer_lib.make_optimizer(config)
  return state_lib.make_spec(model_fn, tx, mesh, RULES), model_fn, tx


@pytest.mark.faults
def test_restore_on_other_mesh_and_fall_back_from_corrupt_latest(tmp_path, capsys):
  config = config_lib.load_config("configs/demo.py")
  config.model.depth = 1
  spec_a, model_fn, tx = _setup(config, data=8, fsdp=1, tensor=1)
  state = state_lib.init_state(model_fn, tx, spec_a, seed=0)
  workdir = str(tmp_path)
  directory = str(tmp_path / "checkpoints")
  ckpt = checkpoint_lib.Checkpointer(workdir, config)
  ckpt.save(1, state, train_flops=1e9, images_seen=64)
  later = jax.tree.map(lambda x: x + 1 if x.dtype == np.float32 else x, state)
  ckpt.save(2, later, train_flops=2e9, images_seen=128)
  ckpt.close()
  expected_1 = jax.device_get(state)

  # A half-written save (Orbax's temporary folder) is never listed.
  os.makedirs(os.path.join(directory, "3.orbax-checkpoint-tmp-1700000000"))
  # Corrupt the latest: its array data is truncated.
  data_dir = os.path.join(directory, "2", "state")
  for root, _, files in os.walk(data_dir):
    for f in files:
      if not f.startswith("_") and not f.endswith(".txt"):
        open(os.path.join(root, f), "wb").close()

  spec_b, _, _ = _setup(config, data=2, fsdp=2, tensor=2)
  ckpt = checkpoint_lib.Checkpointer(workdir, config)
  assert ckpt.all_steps() == [1, 2]
  step, restored, meta = ckpt.restore(spec_b.abstract)
  ckpt.close()
  assert step == 1 and meta == {"step": 1, "train_flops": 1e9, "images_seen": 64}
  warnings = [l for l in capsys.readouterr().out.splitlines() if l.startswith("WARNING")]
  assert len(warnings) == 1 and "checkpoint step 2" in warnings[0] and "resumed from step 1" in warnings[0]
  assert any(d.startswith("2.corrupt-") for d in os.listdir(directory))  # Kept, set aside.
  kernel = restored["params"]["encoder"]["blocks"][0]["mlp"]["fc1"]["kernel"]
  assert kernel.sharding.spec == spec_b.shardings["params"]["encoder"]["blocks"][0]["mlp"]["fc1"]["kernel"].spec
  assert kernel.sharding.mesh.shape == {"data": 2, "fsdp": 2, "tensor": 2}
  for a, b in zip(jax.tree.leaves(jax.device_get(restored)), jax.tree.leaves(expected_1)):
    np.testing.assert_array_equal(a, b)


def test_nothing_is_set_aside_when_no_checkpoint_can_be_read(tmp_path):
  config = config_lib.load_config("configs/demo.py")
  config.model.depth = 1
  spec, model_fn, tx = _setup(config, data=8, fsdp=1, tensor=1)
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path), config)
  ckpt.save(1, state_lib.init_state(model_fn, tx, spec, seed=0))
  ckpt.close()
  for root, _, files in os.walk(tmp_path / "checkpoints" / "1" / "state"):
    for f in files:
      if not f.startswith("_") and not f.endswith(".txt"):
        open(os.path.join(root, f), "wb").close()
  before = sorted(os.listdir(tmp_path / "checkpoints"))
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path), config)
  with pytest.raises(checkpoint_lib.CheckpointError, match=r"no checkpoint .* can be read .*"
                     r"step 1.*Nothing was changed"):
    ckpt.restore(spec.abstract)
  ckpt.close()
  assert sorted(os.listdir(tmp_path / "checkpoints")) == before
