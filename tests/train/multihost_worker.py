"""One of two CPU processes of a jax.distributed run (see test_multihost.py).

argv: process_id port workdir out_json
"""

import json
import sys


def main(process_id, port, workdir, out):
  from maejax import config as config_lib
  from maejax.train import loop
  from maejax.train import step as step_lib

  config = config_lib.load_config("configs/demo.py")
  config.model.depth = 1
  config.batch_size, config.total_steps, config.log_every, config.plot_every = 8, 4, 1, 0
  config.ckpt_every = 2
  config.distributed.initialize = "always"
  config.distributed.coordinator_address = f"127.0.0.1:{port}"
  config.distributed.num_processes = 2
  config.distributed.process_id = process_id
  first = loop.train(config, workdir, progress=False, compiler_options=step_lib.FAST_COMPILE)

  import jax
  import numpy as np
  from maejax.train import mesh as mesh_lib
  from maejax.train import sharding as sharding_lib
  # Host batches -> one global array: each process contributes rows filled with its index.
  mesh = mesh_lib.make_mesh(config.mesh)
  local = {"image": np.full((4, 2, 2, 1), jax.process_index() + 1, np.uint8)}
  glob = sharding_lib.to_global_batch(local, mesh, config.sharding_rules)["image"]
  total = int(jax.jit(lambda x: x.astype(np.int32).sum(),
                      out_shardings=sharding_lib.replicated(mesh))(glob))

  config.total_steps = 6
  second = loop.train(config, workdir, progress=False, compiler_options=step_lib.FAST_COMPILE)
  with open(out, "w") as f:
    json.dump({"process_count": jax.process_count(), "devices": jax.device_count(),
               "global_shape": list(glob.shape), "global_sum": total,
               "first": first, "second": second}, f)


if __name__ == "__main__":
  main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
