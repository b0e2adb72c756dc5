"""maejax: masked autoencoders for cellular morphology in JAX / Flax NNX.

The layer order (imports point only down this list; tests/test_layers.py enforces it):
  cli       maejax/cli: every `python -m maejax.<name>` command (the modules `python -m` runs
            are two-line shims into it); the only layer that may import everything, and
            `compare` the only command that trains and evaluates together.
  eval      maejax/eval: embedding of screens, batch correction, benchmarks, plots; reads
            checkpoints through the API, never through train.
  api       maejax.load / Model / save_pretrained (maejax/api.py) and the weight importers
            (maejax/convert): models + workdir.
  train     maejax/train: mesh, sharding, state, step, checkpoints, metrics, the loop.
  shared    maejax/config.py (the one config language), maejax/workdir.py (the one owner
            of the on-disk layout, all I/O through etils.epath so `gs://` works) and
            maejax/host.py (process settings for CPU hosts, applied on import).
  models, data   maejax/models (Flax modules) and maejax/data (sources, Grain pipelines):
            they import nothing else of maejax.
"""

from maejax import host

host.keep_freed_memory()  # Before anything imports JAX.

from maejax.api import Model, load, save_pretrained  # noqa: E402
from maejax.models import create, get_config, REGISTRY as MODELS  # noqa: E402

__all__ = ["Model", "load", "save_pretrained", "create", "get_config", "MODELS"]
__version__ = "0.1.0"
