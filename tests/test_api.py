"""maejax.load on training workdirs: params and the fixed position tables come back, any step."""

import jax
import numpy as np
import pytest

import maejax
from maejax.train import checkpoint as checkpoint_lib
from maejax import config as config_lib
from maejax.train import loop
from maejax.train import mesh as mesh_lib
from maejax.train import optimizer as optimizer_lib
from maejax.train import state as state_lib

FAST = {"xla_backend_optimization_level": 0}


def _tiny_config():
  c = config_lib.load_config("configs/demo.py")
  c.data.synthetic.update(dict(site_size=32, n_groups=2, genes_per_group=2, n_null_genes=0,
                               controls_per_plate=2, n_experiments=1, plates_per_experiment=1,
                               sites_per_well=1))
  c.batch_size, c.total_steps, c.ckpt_every, c.log_every, c.plot_every = 8, 4, 2, 1, 0
  c.lr = 1e-2  # Large enough that steps 2 and 4 differ visibly.
  return c


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("run"))
  loop.train(_tiny_config(), path, progress=False, compiler_options=FAST)
  return path


def _trained_model(workdir, step):
  """The model as the training code itself restores it (full train state, on its mesh)."""
  config = _tiny_config()
  spec = state_lib.make_spec(loop.model_fn_for(config.model),
                             optimizer_lib.make_optimizer(config),
                             mesh_lib.make_mesh(config.mesh), tuple(config.sharding_rules))
  ckpt = checkpoint_lib.Checkpointer(f"{workdir}/checkpoints", config)
  _, state, _ = ckpt.restore(spec.abstract, step=step)
  ckpt.close()
  return state_lib.merge(spec, state["params"], state["rest"]), state


def _images(n=5):
  return np.random.default_rng(0).integers(0, 256, (n, 32, 32, 6), dtype=np.uint8)


@pytest.mark.parametrize("step", [None, 2])
def test_load_workdir_embeds_like_the_trained_model(workdir, step):
  loaded = maejax.load(workdir, step=step)
  assert loaded.step == (4 if step is None else 2)
  trained, state = _trained_model(workdir, loaded.step)
  images = _images()
  expected = np.asarray(trained.embed(jax.numpy.asarray(images)))
  np.testing.assert_allclose(loaded.embed(images, batch_size=4), expected, rtol=1e-5, atol=1e-5)
  # The non-parameter variables (fixed sin-cos position tables) are the checkpoint's.
  pos = np.asarray(loaded.module.encoder.tokenizer.pos[...])
  np.testing.assert_array_equal(pos, np.asarray(state["rest"]["encoder"]["tokenizer"]["pos"]))


def test_steps_differ_and_checkpoint_folder_forms(workdir):
  images = _images(2)
  last, first = maejax.load(workdir).embed(images), maejax.load(workdir, step=2).embed(images)
  assert np.abs(last - first).max() > 1e-4  # Training moved the weights between checkpoints.
  np.testing.assert_allclose(maejax.load(f"{workdir}/checkpoints/2").embed(images), first,
                             rtol=1e-6)
  np.testing.assert_allclose(maejax.load(f"{workdir}/checkpoints").embed(images), last,
                             rtol=1e-6)


def test_bad_step_and_empty_dir_are_clear_errors(workdir, tmp_path):
  with pytest.raises(ValueError, match=r"step=3: no such checkpoint .*kept steps: \[2, 4\]"):
    maejax.load(workdir, step=3)
  with pytest.raises(FileNotFoundError, match="holds no model"):
    maejax.load(tmp_path)
