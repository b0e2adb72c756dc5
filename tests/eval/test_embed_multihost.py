"""python -m maejax.embed on two processes (jax.distributed on loopback, gloo, 2 CPU devices each):
each embeds its own resume shards, process 0 writes the same table as a single process."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pandas as pd

import maejax
from maejax import config as config_lib
from maejax.cli import embed as embed_cli
from maejax.eval import embed

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCREEN = ["--config.data.synthetic.site_size=32", "--config.data.synthetic.n_groups=2",
          "--config.data.synthetic.genes_per_group=2", "--config.data.synthetic.n_null_genes=1",
          "--config.data.synthetic.controls_per_plate=2",
          "--config.data.synthetic.n_experiments=1",
          "--config.data.synthetic.plates_per_experiment=2",
          "--config.data.synthetic.sites_per_well=2"]
KEYS = ["Metadata_experiment", "Metadata_plate", "Metadata_well"]


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_embed_their_own_shards_and_match_one_process(tmp_path):
  vit = tmp_path / "vit"
  config = config_lib.experiment("v", "vit_tiny")
  maejax.save_pretrained(maejax.create(config.model), config, vit)
  # 28 sites in 5 shards of <= 6: process 0 owns shards 0, 2, 4; process 1 owns 1, 3.
  args = ["--checkpoint", str(vit), "--crop-size", "16", "--batch-size", "8",
          "--sites-per-shard", "6", "--no-progress", "--json"] + SCREEN
  out = tmp_path / "two.parquet"
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_PLATFORMS="cpu", JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{_free_port()}",
             JAX_NUM_PROCESSES="2",
             PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  procs = [subprocess.Popen([sys.executable, "-m", "maejax.embed", "--out", str(out)] + args,
                            cwd=ROOT, env=dict(env, JAX_PROCESS_ID=str(i)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  try:
    # The single-process table, computed meanwhile in this process (8 devices).
    assert embed_cli.main(["--out", str(tmp_path / "one.parquet")] + args) == 0
    logs = [p.communicate(timeout=120) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, (stdout, stderr) in zip(procs, logs):
    assert p.returncode == 0, (stdout + stderr)[-3000:]
  infos = [json.loads(stdout.strip().splitlines()[-1]) for stdout, _ in logs]

  assert [(i["process_index"], i["process_count"]) for i in infos] == [(0, 2), (1, 2)]
  assert infos[0]["shards"] == [0, 2, 4] and infos[0]["local_sites"] == 6 + 6 + 4
  assert infos[1]["shards"] == [1, 3] and infos[1]["local_sites"] == 6 + 6
  assert infos[0]["devices"] == infos[1]["devices"] == 2  # Each embeds on its own devices.
  assert infos[0]["files"] == [str(out)] and infos[1]["files"] == []
  assert "wells" not in infos[1] and infos[0]["sites"] == 28
  assert not embed.partial_dir_for(out).exists()

  one = pd.read_parquet(tmp_path / "one.parquet").sort_values(KEYS).reset_index(drop=True)
  two = pd.read_parquet(out).sort_values(KEYS).reset_index(drop=True)
  assert list(two.columns) == list(one.columns) and len(two) == len(one) == 14
  features = [c for c in one.columns if c.startswith("feature_")]
  metadata = [c for c in one.columns if c not in features]
  pd.testing.assert_frame_equal(two[metadata], one[metadata])
  np.testing.assert_allclose(two[features].to_numpy(), one[features].to_numpy(),
                             rtol=1e-4, atol=1e-5)
