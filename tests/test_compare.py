"""python -m maejax.compare on a very small screen: every model, weights and correction scored;
the checkpoint and block sweeps of `python -m maejax.benchmark --sweep` on its workdirs."""

import contextlib
import functools
import io
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from maejax import data as data_lib
from maejax.cli import benchmark
from maejax.cli import compare
from maejax.cli import embed
from maejax.cli import sweep
from maejax.data import synthetic
from maejax.eval import io as eval_io
from maejax.train import loop
from maejax.train import step as step_lib

SCREEN = ["--config.data.synthetic.site_size=64", "--config.data.synthetic.n_groups=3",
          "--config.data.synthetic.genes_per_group=3", "--config.data.synthetic.n_null_genes=1",
          "--config.data.synthetic.controls_per_plate=3",
          "--config.data.synthetic.n_experiments=2",
          "--config.data.synthetic.plates_per_experiment=1",
          "--config.data.synthetic.sites_per_well=1", "--config.batch_size=8",
          "--config.ckpt_every=1"]
CONFIGS = "configs/demo.py,configs/munet_demo.py,configs/wsl_demo.py"
FAST = step_lib.FAST_COMPILE


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  out = tmp_path_factory.mktemp("compare")
  stdout = io.StringIO()
  # The whole command (compare.main), its training steps compiled as the training tests do.
  with contextlib.redirect_stdout(stdout), pytest.MonkeyPatch.context() as mp:
    mp.setattr(compare, "run", functools.partial(compare.run, compiler_options=FAST))
    rc = compare.main(["--configs", CONFIGS, "--out", str(out), "--steps", "2", "--n-null", "20",
                       "--no-progress", "--json"] + SCREEN)
  return out, rc, stdout.getvalue()


def test_table_has_every_row(run):
  out, rc, stdout = run
  assert rc == 0
  summary = json.loads(stdout.strip().splitlines()[-1])
  table = pd.read_csv(out / "comparison.csv")
  expected = {(m, w, c) for m in ("demo", "munet_demo", "wsl_demo") for w in ("trained", "random")
              for c in ("none", "tvn")} | {("intensity_stats", "none", c) for c in ("none", "tvn")}
  assert set(zip(table.model, table.weights, table.correction)) == expected
  assert len(table) == len(expected) == len(summary["rows"])
  assert table[["recall_5_95", "recall_10_90"]].apply(lambda v: v.between(0, 1)).all().all()
  assert (table.recall_10_90 >= table.recall_5_95).all()  # Wider tails hold more pairs.
  assert set(summary["checks"]) == {"demo", "munet_demo", "wsl_demo"}
  assert (table[table.weights == "trained"].steps == 2).all()
  # 3 groups of 3 genes = 9 planted pairs: recall is a multiple of 1/9.
  np.testing.assert_allclose((table.recall_5_95 * 9) % 1, 0, atol=1e-9)
  default = len(synthetic.ScreenSpec().genes) + 1  # configs/wsl_demo.py: genes + EMPTY
  assert f"num_classes {default} -> 11" in stdout  # The WSL head follows the screen's labels.
  # Each config's own screen is embedded: 64 px sites, four tiles of the 32 px training crops.
  wells = pd.read_parquet(out / "wells" / "munet_demo_random.parquet")
  assert (wells.Metadata_n_crops == 4).all() and len(wells) == 2 * (9 + 1 + 3)
  # Which planted complexes each row finds: 3 complexes of 3 pairs, every row and correction.
  complexes = pd.read_csv(out / "complex_recall.csv")
  assert len(complexes) == len(expected) * 3 * 2 and (complexes.pairs == 3).all()
  assert "recall 5/95 (TVN) of each complex's own pairs" in stdout
  block = stdout.split("own pairs (their count in brackets):\n")[1].splitlines()
  assert "complex_1 (3)" in block[0] and "complex_3 (3)" in block[0]
  assert block[2].split()[:2] == ["demo", "trained"]  # A row per model and weights.
  assert len(summary["complexes"]) == len(complexes)
  for name in ("recall_curve_none.png", "recall_curve_tvn.png", "wells/demo.parquet",
               "wells/intensity_stats.parquet", "demo_random/tvn/recall.csv"):
    assert (out / name).is_file(), name


def test_rxrx1_layout_screen_end_to_end(run, tmp_path, rxrx1_layout):
  """The small screen in RxRx1's layout (its metadata.csv has its own well_id): embedded with
  the demo's weights and benchmarked, every entry's figures written; the well tables keep
  RxRx1's well_id apart from maejax's."""
  config = compare.load_configs(["configs/demo.py"], SCREEN, steps=2)[0]
  screen = tmp_path / "rxrx1"
  synthetic.write_screen(synthetic.SyntheticScreen.from_config(config.data.synthetic),
                         str(screen), workers=1)
  meta = rxrx1_layout(screen)
  out = tmp_path / "compare"
  shutil.copytree(run[0] / "runs" / "demo", out / "runs" / "demo")  # Trained: reused.
  args = ["--configs", "configs/demo.py", "--out", str(out), "--steps", "2", "--n-null", "20",
          "--no-progress", "--relationships", str(screen / "relationships.csv"),
          "--config.data.source=rxrx1", f"--config.data.path={screen}", "--config.batch_size=8"]
  assert compare.main(args) == 0
  table = pd.read_csv(out / "comparison.csv")
  labels = ("demo", "demo_random", "intensity_stats")
  assert len(table) == 2 * len(labels) and table.recall_5_95.between(0, 1).all()
  for label in labels:
    wells = pd.read_parquet(out / "wells" / f"{label}.parquet")
    assert wells.index.name == "Metadata_well_id" and len(wells) == meta.well_id.nunique()
    assert sorted(wells.Metadata_source_well_id.astype(str)) == sorted(meta.well_id.unique())
    for correction in ("none", "tvn"):
      for name in ("recall.csv", "recall_curve.png", "replicate_consistency.png"):
        assert (out / label / correction / name).is_file(), (label, correction, name)
  assert benchmark.main(["--embeddings", str(out / "wells" / "demo.parquet"), "--relationships",
                         str(screen / "relationships.csv"), "--out", str(tmp_path / "bench"),
                         "--n-null", "20"]) == 0


def _compare_demo_again(run, out, flag, extra_model):
  """compare.main on the demo run (reused) with `flag`: its table, after checking that it has
  the rows of `demo`, `extra_model` and the statistics, and checks for both models."""
  shutil.copytree(run[0] / "runs" / "demo", out / "runs" / "demo")  # Trained: reused.
  args = ["--configs", "configs/demo.py", "--out", str(out), "--steps", "2", "--n-null", "20",
          "--no-progress", flag, "--json"] + SCREEN
  stdout = io.StringIO()
  with contextlib.redirect_stdout(stdout):
    assert compare.main(args) == 0
  table = pd.read_csv(out / "comparison.csv")
  expected = {(m, w, c) for m in ("demo", extra_model) for w in ("trained", "random")
              for c in ("none", "tvn")} | {("intensity_stats", "none", c) for c in ("none", "tvn")}
  assert set(zip(table.model, table.weights, table.correction)) == expected
  assert set(json.loads(stdout.getvalue().strip().splitlines()[-1])["checks"]) == {
      "demo", extra_model}
  return table


def test_crop_stats_rows_come_with_and_without_the_columns(run, tmp_path):
  out = tmp_path / "compare"
  _compare_demo_again(run, out, "--crop-stats", "demo (plain)")
  for label in ("demo", "demo_random"):
    full = pd.read_parquet(out / "wells" / f"{label}.parquet")
    plain = pd.read_parquet(out / "wells" / f"{label}_plain.parquet")
    features = [c for c in full.columns if c.startswith("feature_")]
    assert len(features) == 64 + 12  # vit_tiny's width + mean and std of 6 channels.
    pd.testing.assert_frame_equal(plain, full.drop(columns=features[64:]))
    # The appended columns are each crop's per-channel means (in [0, 1]) and stds.
    means = full[features[64:70]].to_numpy()
    assert ((means > 0) & (means < 1)).all()


def test_join_stats_rows_score_the_model_joined_to_the_statistics(run, tmp_path):
  out = tmp_path / "compare"
  table = _compare_demo_again(run, out, "--join-stats", "demo + statistics")
  joined = pd.read_parquet(out / "wells" / "demo_joined.parquet")
  stats = pd.read_parquet(out / "wells" / "intensity_stats.parquet")
  assert sum(c.startswith("part1_") for c in joined.columns) == 64
  assert sum(c.startswith("part2_") for c in joined.columns) == 9 * 6
  # The same rows as `maejax.benchmark --join` on the tables compare wrote.
  config = compare.load_configs(["configs/demo.py"], SCREEN, steps=2)[0]
  screen = synthetic.SyntheticScreen.from_config(config.data.synthetic)
  screen.relationships.to_csv(tmp_path / "relationships.csv", index=False)
  with contextlib.redirect_stdout(io.StringIO()) as printed:
    assert benchmark.main(["--embeddings", str(out / "wells" / "demo.parquet"), "--join",
                           str(out / "wells" / "intensity_stats.parquet"), "--relationships",
                           str(tmp_path / "relationships.csv"), "--out", str(tmp_path / "b"),
                           "--n-null", "20", "--map-null-size", "0", "--json"]) == 0
  summary = json.loads(printed.getvalue().strip().splitlines()[-1])
  row = table[(table.model == "demo + statistics") & (table.weights == "trained")
              & (table.correction == "tvn")]
  assert row.recall_5_95.iloc[0] == pytest.approx(summary["recall"][0]["recall"])
  assert summary["parts"] and len(stats) == len(joined)


def features(path):
  """A kept well table and its features [wells, features]."""
  table = eval_io.read_embeddings(path)
  return table, table[eval_io.feature_columns(table)].to_numpy()


def test_pool_embeds_trained_and_random_weights_by_the_cls_token(run, tmp_path):
  out = tmp_path / "compare"
  shutil.copytree(run[0] / "wells", out / "wells")  # Mean-pooled tables: must not be reused.
  _compare_demo_again(run, out, "--pool=cls", "demo")
  for label in ("demo", "demo_random"):
    cls, cls_features = features(out / "wells" / f"{label}.parquet")
    assert eval_io.provenance_of(cls)["pool"] == "cls"
    assert not np.allclose(cls_features, features(run[0] / "wells" / f"{label}.parquet")[1])
  # The trained table is the one maejax.embed --pool cls writes from the same checkpoint.
  assert embed.main(["--checkpoint", str(out / "runs" / "demo"), "--pool", "cls", "--out",
                     str(tmp_path / "cls.parquet"), "--no-progress"]) == 0
  alone, alone_features = features(tmp_path / "cls.parquet")
  cls, cls_features = features(out / "wells" / "demo.parquet")
  assert list(alone.index) == list(cls.index)
  np.testing.assert_allclose(alone_features, cls_features, rtol=1e-5, atol=1e-6)


def test_several_pools_score_each_model_each_way_from_one_run(run, tmp_path):
  out = tmp_path / "compare"
  shutil.copytree(run[0] / "runs" / "demo", out / "runs" / "demo")  # Trained: reused.
  args = ["--configs", "configs/demo.py", "--out", str(out), "--steps", "2", "--n-null", "20",
          "--no-progress", "--crop-stats", "--pool", "mean", "cls", "--json"] + SCREEN
  with contextlib.redirect_stdout(io.StringIO()) as printed:
    assert compare.main(args) == 0
  assert "demo (vit_tiny): reusing step 2 in" in printed.getvalue()
  table = pd.read_csv(out / "comparison.csv")
  models = {f"demo [{pool}]{plain}" for pool in ("mean", "cls") for plain in ("", " (plain)")}
  expected = {(m, w, c) for m in models for w in ("trained", "random")
              for c in ("none", "tvn")} | {("intensity_stats", "none", c) for c in ("none", "tvn")}
  assert set(zip(table.model, table.weights, table.correction)) == expected
  assert set(json.loads(printed.getvalue().strip().splitlines()[-1])["checks"]) == models
  # The mean tables without crop statistics are the single-pool run's, row for row.
  first = pd.read_csv(run[0] / "comparison.csv")
  for weights in ("trained", "random"):
    suffix = "_random" if weights == "random" else ""
    _, before = features(run[0] / "wells" / f"demo{suffix}.parquet")
    for pool in ("mean", "cls"):
      plain, plain_features = features(out / "wells" / f"demo_{pool}{suffix}_plain.parquet")
      same = np.allclose(plain_features, before, atol=1e-6)
      assert same == (pool == "mean") and eval_io.provenance_of(plain)["pool"] == pool
    rows = [t[(t.model == m) & (t.weights == weights)].set_index("correction").recall_5_95
            for t, m in ((table, "demo [mean] (plain)"), (first, "demo"))]
    pd.testing.assert_series_equal(rows[0], rows[1], check_names=False)


def test_finished_workdirs_are_reused(run, tmp_path):
  out, _, _ = run
  for steps in (1, 2):  # Checkpoints 1 and 2 are kept.
    config = compare.load_configs(["configs/demo.py"], SCREEN, steps=steps)[0]
    assert compare.train_or_reuse(config, str(out / "runs" / "demo"))["status"] == "reused"
  (tmp_path / "checkpoints" / "5" / "state").mkdir(parents=True)
  with pytest.raises(ValueError, match="up to step 5 but not step 2"):
    compare.train_or_reuse(config, str(tmp_path))


def test_bad_arguments_are_clear_errors(tmp_path, capsys):
  assert compare.main(["--configs", "configs/nope.py", "--out", str(tmp_path)]) == 2
  assert "no config named or at" in capsys.readouterr().err
  assert compare.main(["--configs", "configs/demo.py,configs/demo.py", "--out",
                       str(tmp_path)]) == 2
  assert "share a name" in capsys.readouterr().err
  # Before any training: the masked U-Net embeds global averages only.
  assert compare.main(["--configs", "configs/demo.py,configs/munet_demo.py", "--pool", "cls",
                       "--out", str(tmp_path)]) == 2
  assert "munet_demo (munet_tiny) embeds by mean" in capsys.readouterr().err
  assert not (tmp_path / "runs").exists()


def test_sweep_scores_every_checkpoint_against_its_flops(run):
  out, _, _ = run
  args = ["--sweep", str(out / "runs" / "demo"), "--out", str(out / "sweep"), "--n-null", "20",
          "--no-progress"]
  assert benchmark.main(args) == 0  # `python -m maejax.benchmark --sweep` hands over to sweep.
  table = pd.read_csv(out / "sweep" / "sweep.csv")
  assert table.step.tolist() == [1, 2] and set(table.database) == {"planted"}
  config = compare.load_configs(["configs/demo.py"], SCREEN, steps=2)[0]
  per_step = loop.flops_per_image(config) * 8  # Analytic FLOPs per image x batch.
  np.testing.assert_allclose(table.train_flops, per_step * table.step, rtol=1e-9)
  assert table.recall_5_95.between(0, 1).all() and (table.pairs == 9).all()
  assert (out / "sweep" / "recall_vs_flops.png").is_file()
  # Each checkpoint's recall of each planted complex (3 complexes of 3 pairs); the complexes
  # partition the planted pairs and share the map's null, so their pair-weighted mean is the
  # checkpoint's recall of all planted pairs.
  complexes = pd.read_csv(out / "sweep" / "sweep_complexes.csv")
  assert len(complexes) == 2 * 3 * 2 and (complexes.pairs == 3).all()
  assert list(complexes.columns[:3]) == ["run", "model", "step"]
  pooled = complexes[complexes.threshold == "5-95"].groupby("step").apply(
      lambda g: np.average(g.recall, weights=g.pairs), include_groups=False)
  np.testing.assert_allclose(pooled.to_numpy(), table.recall_5_95.to_numpy(), atol=1e-12)
  assert sweep.main(args) == 0  # Rerun: cached well tables, same numbers.
  pd.testing.assert_frame_equal(pd.read_csv(out / "sweep" / "sweep.csv"), table)
  pd.testing.assert_frame_equal(pd.read_csv(out / "sweep" / "sweep_complexes.csv"), complexes)
  # The same pairs and complexes as files (--relationships, a clusters TSV beside them).
  source = data_lib.make_source(config.data)
  files = out / "planted_files"
  files.mkdir()
  source.relationships.to_csv(files / "relationships.csv", index=False)
  (files / "clusters.tsv").write_text(
      "".join(f"{name}\t{' '.join(genes)}\n" for name, genes in source.clusters.items()))
  assert sweep.main(args[:3] + [str(out / "sweep_files"), "--relationships", str(files)]
                    + args[4:]) == 0
  from_files = pd.read_csv(out / "sweep_files" / "sweep_complexes.csv")
  np.testing.assert_allclose(from_files.recall, complexes.recall)


def test_block_sweep_embeds_each_level(run, capsys):
  out, _, _ = run
  assert sweep.main(["--sweep", str(out / "runs" / "munet_demo"), "--blocks", "all", "--out",
                     str(out / "blocks"), "--n-null", "20", "--no-progress", "--json",
                     "--config.data.synthetic.site_size=32"]) == 0
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  table = pd.read_csv(out / "blocks" / "blocks.csv")
  assert table.block.tolist() == [1, 2] and (table.step == 2).all()
  assert [r["block"] for r in summary["rows"]] == [1, 2]
  # munet_tiny widths (16, 32): level 1 averages 16 channels, the bottleneck 32. The screen
  # rendered at 32 px (--config.data override): one tile per site.
  wells = pd.read_parquet(out / "blocks" / "wells" / "munet_demo_step2_block1.parquet")
  assert wells.filter(like="feature_").shape[1] == 16 and (wells.Metadata_n_crops == 1).all()
  assert (out / "blocks" / "recall_vs_block.png").is_file()
  complexes = pd.read_csv(out / "blocks" / "blocks_complexes.csv")
  assert sorted(set(complexes.block)) == [1, 2] and len(complexes) == 2 * 3 * 2
  assert summary["files"][-1].endswith("blocks_complexes.csv")
  assert sweep.main(["--sweep", str(out / "runs" / "demo"), "--blocks", "3", "--out",
                     str(out / "blocks")]) == 2
  assert "--blocks [3]: vit_tiny has blocks 1..2" in capsys.readouterr().err
  assert sweep.main(["--sweep", str(out / "runs" / "demo"), "--out", str(out / "blocks"),
                     "--config.data.nope=1", "--no-progress"]) == 2
  assert capsys.readouterr().err.startswith("error: --config.data.nope: no such config field")
