"""python -m maejax.embed: wells from tiled crops (vs a NumPy reference), resume, channel subsets,
the screen from --config and typed --config.data overrides."""

import json
import os
import subprocess
import sys

import anndata
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import maejax
from maejax import config as config_lib
from maejax import data as data_lib
from maejax import workdir
from maejax.cli import embed as embed_cli
from maejax.eval import embed
from maejax.eval import io

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL = dict(site_size=32, n_groups=2, genes_per_group=2, n_null_genes=1, controls_per_plate=2,
             n_experiments=1, plates_per_experiment=2, sites_per_well=2)
SCREEN = [f"--config.data.synthetic.{k}={v}" for k, v in SMALL.items()]
N_WELLS = 2 * (2 * 2 + 1 + 2)  # plates x (genes + null genes + controls)


@pytest.fixture(scope="module")
def camae(tmp_path_factory):
  """A random-weights channel-agnostic model saved like imported OpenPhenom weights."""
  path = tmp_path_factory.mktemp("camae")
  config = config_lib.experiment("ca", "camae_tiny")
  maejax.save_pretrained(maejax.create(config.model), config, path)
  return str(path)


def _run(args):
  args = args + ["--no-progress", "--json"]
  assert embed_cli.main(args) == 0
  return args


def _source(channels=(0, 1, 2, 3, 4, 5)):
  config = data_lib.default_config()
  config.synthetic.update(SMALL)
  config.channels = tuple(channels)
  return data_lib.make_source(config)


def _reference(model, source, crop, channels=None):
  """NumPy tiling + pandas averaging of model.embed (one device, unpadded batches)."""
  site_vectors = []
  for i in range(len(source)):
    image = source[i]
    crops = np.stack([image[y:y + crop, x:x + crop] for y in range(0, 32, crop)
                      for x in range(0, 32, crop)])
    site_vectors.append(model.embed(crops, batch_size=len(crops)).mean(0))
  sites = pd.DataFrame(np.asarray(site_vectors))
  keys = source.metadata[["experiment", "plate", "well"]]
  return pd.concat([keys, sites], axis=1).groupby(["experiment", "plate", "well"]).mean()


def test_one_row_per_well_matches_numpy_reference(camae, tmp_path, capsys):
  out = tmp_path / "wells.parquet"
  _run(["--checkpoint", camae, "--out", str(out), "--crop-size", "16", "--batch-size", "12",
        "--h5ad"] + SCREEN)
  info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  table = io.read_embeddings(out)
  assert len(table) == N_WELLS and info["wells"] == N_WELLS
  assert info["crops"] == 2 * N_WELLS * 4  # Two sites per well, four 16 px tiles per site.
  metadata, features, _ = io.split_table(table)
  assert features.shape == (N_WELLS, 64)  # camae_tiny width.
  for column in ("experiment", "plate", "well", "perturbation", "is_control"):
    assert f"Metadata_{column}" in metadata
  assert "Metadata_site" not in metadata  # Varies within a well.
  assert (metadata.Metadata_n_sites == 2).all() and (metadata.Metadata_n_crops == 8).all()
  assert metadata.Metadata_is_control.sum() == 4
  assert not (tmp_path / "wells.parquet.partial").exists()
  expected = _reference(maejax.load(camae), _source(), 16)
  got = table.set_index(["Metadata_experiment", "Metadata_plate", "Metadata_well"])
  got = got.loc[list(expected.index), [f"feature_{i}" for i in range(64)]].to_numpy()
  np.testing.assert_allclose(got, expected.to_numpy(), rtol=1e-4, atol=1e-5)
  # The well's perturbation is the source's.
  first = _source().metadata.iloc[0]
  row = table[(table.Metadata_plate == first.plate) & (table.Metadata_well == first.well)]
  assert row.Metadata_perturbation.item() == first.perturbation
  h5ad = io.read_embeddings(tmp_path / "wells.h5ad")
  np.testing.assert_allclose(h5ad[[f"feature_{i}" for i in range(64)]].to_numpy(), features,
                             rtol=1e-6)
  # Other tools see the well ids, the categories and the provenance without maejax.
  plain = pd.read_parquet(out)
  assert plain.index.name == "Metadata_well_id" and plain.index.is_unique
  assert plain.index[0] == "_".join(str(plain[f"Metadata_{k}"].iloc[0])
                                    for k in ("experiment", "plate", "well"))
  assert isinstance(plain.Metadata_perturbation.dtype, pd.CategoricalDtype)
  assert plain.Metadata_n_sites.dtype == np.int64
  stored = json.loads(pq.read_schema(out).metadata[b"maejax"])
  assert stored["model"] == "camae_tiny" and stored["checkpoint"] == camae
  assert stored["crop_size"] == 16 and stored["pool"] and stored["feature_prefix"] == "feature_"
  assert stored["channels"] == [0, 1, 2, 3, 4, 5] and len(stored["channel_names"]) == 6
  adata = anndata.read_h5ad(tmp_path / "wells.h5ad")
  assert adata.obs_names.tolist() == plain.index.tolist()
  assert isinstance(adata.obs.plate.dtype, pd.CategoricalDtype)
  assert adata.uns["maejax"]["model"] == "camae_tiny"


def test_crop_stats_follow_the_embedding(camae):
  """--crop-stats: each crop's per-channel mean and std in [0, 1] units (what the model's
  input standardization removes) after its unchanged embedding."""
  model, source = maejax.load(camae), _source()
  crops = np.stack([source[i][:16, :16] for i in range(4)])
  ids = np.tile(source.channel_ids, (4, 1))
  plain = embed.make_embedder(model, source, 16, batch_size=8)(crops, ids)
  both = embed.make_embedder(model, source, 16, batch_size=8, crop_stats=True)(crops, ids)
  x = crops.reshape(4, -1, 6) / 255.0
  np.testing.assert_allclose(both[:, :64], plain, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(both[:, 64:], np.concatenate([x.mean(1), x.std(1)], 1),
                             rtol=1e-5, atol=1e-6)


@pytest.mark.faults
def test_resume_after_interruption_gives_the_same_table(camae, tmp_path, monkeypatch):
  args = ["--checkpoint", camae, "--crop-size", "16", "--batch-size", "8",
          "--sites-per-shard", "6"] + SCREEN
  _run(args + ["--out", str(tmp_path / "full.parquet")])
  full = pd.read_parquet(tmp_path / "full.parquet")

  out = tmp_path / "resumed.parquet"
  real, calls = embed.embed_sites, []

  def crash_on_third_block(*a, **kw):
    calls.append(1)
    if len(calls) == 3:
      raise KeyboardInterrupt  # As if the job were killed while embedding block 3.
    return real(*a, **kw)

  monkeypatch.setattr(embed, "embed_sites", crash_on_third_block)
  with pytest.raises(KeyboardInterrupt):
    embed_cli.main(args + ["--out", str(out), "--no-progress"])
  assert sorted(p.name for p in (tmp_path / "resumed.parquet.partial").glob("shard_*")) == [
      "shard_000000.parquet", "shard_000001.parquet"]
  calls.clear()
  monkeypatch.setattr(embed, "embed_sites", lambda *a, **kw: (calls.append(1), real(*a, **kw))[1])
  _run(args + ["--out", str(out)])
  assert len(calls) == 5 - 2  # 28 sites in 5 blocks of <= 6: only the unfinished blocks ran.
  pd.testing.assert_frame_equal(pd.read_parquet(out), full)


def test_resume_refuses_other_settings(camae, tmp_path):
  out = tmp_path / "e.parquet"
  partial = embed.partial_dir_for(out)
  partial.mkdir()
  (partial / embed.SETTINGS).write_text(json.dumps({"checkpoint": "elsewhere"}))
  with pytest.raises(ValueError, match="other settings.*--restart"):
    embed_cli.run(*embed_cli.parse_args(["--checkpoint", camae, "--out", str(out)] + SCREEN))
  _run(["--checkpoint", camae, "--out", str(out), "--restart", "--crop-size", "32"] + SCREEN)
  assert len(pd.read_parquet(out)) == N_WELLS


def test_channel_subsets_on_a_channel_agnostic_model(camae, tmp_path):
  model = maejax.load(camae)
  for channels, pool, dim in (("0,2,4", None, 64), ("3", None, 64), ("1,5", "channelwise", 128)):
    out = tmp_path / f"c{channels.replace(',', '')}.parquet"
    extra = ["--pool", pool] if pool else []
    _run(["--checkpoint", camae, "--out", str(out), "--channels", channels,
          "--crop-size", "32"] + extra + SCREEN)
    table = pd.read_parquet(out)
    _, features, _ = io.split_table(table)
    assert features.shape == (N_WELLS, dim)
    if pool is None:
      ids = [int(c) for c in channels.split(",")]
      expected = _reference(model, _source(ids), 32)
      got = table.set_index(["Metadata_experiment", "Metadata_plate", "Metadata_well"])
      np.testing.assert_allclose(got.loc[list(expected.index), [f"feature_{i}" for i in range(dim)]],
                                 expected.to_numpy(), rtol=1e-4, atol=1e-5)


def test_bad_inputs_are_clear_errors(camae, tmp_path, capsys):
  vit = tmp_path / "vit"
  config = config_lib.experiment("v", "vit_tiny")
  maejax.save_pretrained(maejax.create(config.model), config, vit)
  out = str(tmp_path / "e.parquet")
  cases = [
      (["--checkpoint", str(vit), "--channels", "0,1,2"], "expects 6 channels, got 3"),
      (["--checkpoint", camae, "--config.data.synthetic.nope=1"],
       "--config.data.synthetic.nope: no such"),
      (["--checkpoint", camae, "--config.batch_size=1"], "--config.batch_size: no such"),
      (["--checkpoint", camae, "--config.data.synthetic.site_size=big"],
       "--config.data.synthetic.site_size='big': expected an int"),
      (["--checkpoint", camae, "--crop-size", "64"], "--crop-size 64 exceeds the sites"),
      (["--checkpoint", camae, "--config", "nowhere.py"], "no config named or at"),
      (["--checkpoint", str(tmp_path / "missing")], "is not a directory"),
  ]
  for args, message in cases:
    assert embed_cli.main(args + ["--out", out, "--no-progress"] + SCREEN) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("error: ") and err.count("\n") == 1, err


def test_intensity_statistics_per_channel():
  source = _source((0, 3))
  sites = embed.intensity_sites(source, [0, 5])
  image = source[5].astype(np.float64)
  features = sites.iloc[1][[f"feature_{i}" for i in range(18)]].to_numpy(np.float64)
  assert sites.site_index.tolist() == [0, 5]
  # Channel c's block of 9: mean, std, then percentiles 1, 5, 25, 50, 75, 95, 99.
  np.testing.assert_allclose(features[[0, 9]], image.mean((0, 1)), rtol=1e-5)
  np.testing.assert_allclose(features[[1, 10]], image.std((0, 1)), rtol=1e-5)
  np.testing.assert_allclose(features[[5, 14]], np.median(image.reshape(-1, 2), 0), rtol=1e-5)


def test_config_file_names_the_screen_and_overrides_are_typed(camae, tmp_path, capsys):
  """--config replaces the checkpoint's data (here a config.json of a 2-plate screen); the
  --config.data overrides then change fields of it."""
  config = config_lib.default_config()
  config.data.synthetic.update(dict(SMALL, plates_per_experiment=1))
  workdir.write_config(tmp_path / "screen", config)
  out = tmp_path / "w.parquet"
  _run(["--checkpoint", camae, "--out", str(out), "--config", str(tmp_path / "screen"),
        "--crop-size", "0"])
  info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert info["wells"] == N_WELLS // 2 and info["crops"] == N_WELLS  # Whole 32 px sites.
  _run(["--checkpoint", camae, "--out", str(out), "--config",
        str(tmp_path / "screen" / "config.json"), "--crop-size", "0",
        "--config.data.synthetic.plates_per_experiment=2", "--restart"])
  info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert info["wells"] == N_WELLS and len(pd.read_parquet(out)) == N_WELLS


def test_help_lists_the_data_fields_and_a_bad_field_is_one_error_line(camae, tmp_path, capsys):
  with pytest.raises(SystemExit) as exit_:  # The help in this process; the error line below
    embed_cli.main(["--help"])              # from `python -m maejax.embed`, a process of its own.
  assert exit_.value.code == 0
  help_text = capsys.readouterr().out
  for flag in ("--checkpoint", "--config", "--block", "--sites-per-shard", "--distributed",
               "--config.data.synthetic.site_size=256", "--config.data.crop_size=256",
               "--config.data.source=\"synthetic\""):
    assert flag in help_text, flag
  assert "--data.synthetic" not in help_text.replace("--config.data.", "")
  proc = subprocess.run(
      [sys.executable, "-m", "maejax.embed", "--checkpoint", camae, "--out",
       str(tmp_path / "e.parquet"), "--config.data.no_such=1", "--no-progress"],
      cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 2, proc.stdout + proc.stderr
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: --config.data.no_such: no such"), lines
  assert not (tmp_path / "e.parquet").exists()


def test_bfloat16_embedding_is_within_tolerance_of_float32(camae, tmp_path, capsys):
  """`--dtype bfloat16` computes in bf16 (the table differs from fp32's) within a cosine of
  0.999 per well: bf16 keeps 8 bits of mantissa, and each feature averages many tokens."""
  tables = {}
  for dtype in ("float32", "bfloat16"):
    out = tmp_path / f"{dtype}.parquet"
    _run(["--checkpoint", camae, "--out", str(out), "--crop-size", "16", "--dtype", dtype]
         + SCREEN)
    capsys.readouterr()
    tables[dtype] = np.asarray(io.split_table(io.read_embeddings(out))[1], np.float64)
    assert io.provenance_of(io.read_embeddings(out))["dtype"] == dtype
  full, half = tables["float32"], tables["bfloat16"]
  cosine = (full * half).sum(1) / np.linalg.norm(full, axis=1) / np.linalg.norm(half, axis=1)
  assert cosine.min() > 0.999
  assert np.abs(full - half).max() > 1e-6  # Really computed in bf16.
  # Float32 is unchanged by asking for it: the same weights, the same program.
  model = maejax.load(camae)
  assert maejax.load(camae, dtype="float32").config.model.dtype == "float32"
  assert model.with_dtype("float32") is model
