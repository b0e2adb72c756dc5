"""`python -m maejax.benchmark` on synthetic CellProfiler-style tables (nothing trained)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from maejax.cli import benchmark as cli
from maejax.eval import pipeline

REPO = Path(__file__).resolve().parents[2]


def _cellprofiler_screen(seed=0, confounded=True, d=12, controls_per_plate=10):
  """Complexes of 4 genes sharing a phenotype; every gene is in ONE batch (plate) when
  `confounded`, complexes span plates, and plates add large shifts and scalings."""
  rng = np.random.default_rng(seed)
  genes = [f"GENE{i}" for i in range(32)]
  complexes = [genes[i:i + 4] for i in range(0, 32, 4)]
  phenotype = {}
  for members in complexes:
    center = rng.normal(size=d) * 1.5
    for g in members:
      phenotype[g] = center + rng.normal(size=d) * 0.4
  plates = [f"P{b}" for b in range(4)]
  effects = {p: (rng.normal(size=d) * 6, rng.uniform(0.3, 3, d)) for p in plates}
  names = [f"Cells_AreaShape_F{k}" if k % 2 else f"Nuclei_Intensity_MeanIntensity_F{k}"
           for k in range(d)]
  rows = []
  for gi, g in enumerate(genes + ["non-targeting"] * (4 * controls_per_plate)):
    for plate in ([plates[gi % 4]] if confounded and g != "non-targeting" else plates):
      for _ in range(2 if g != "non-targeting" else 1):
        if g == "non-targeting" and gi % 4 != plates.index(plate):
          continue  # controls_per_plate control wells per plate
        shift, scale = effects[plate]
        x = (phenotype.get(g, np.zeros(d)) + rng.normal(size=d) * 0.6) * scale + shift
        rows.append({"Metadata_Plate": plate, "Metadata_Well": f"W{len(rows)}",
                     "Metadata_Gene": g, "FileName_DNA": f"{plate}_{len(rows)}.tif",
                     **dict(zip(names, x))})
  relationships = pd.DataFrame([(a, b) for m in complexes for a in m for b in m if a < b],
                               columns=["entity1", "entity2"])
  clusters = "".join(f"cx{i}\t{' '.join(m)}\n" for i, m in enumerate(complexes))
  return pd.DataFrame(rows), relationships, clusters


def _write_inputs(tmp_path, **kwargs):
  table, relationships, clusters = _cellprofiler_screen(**kwargs)
  table.to_csv(tmp_path / "cellprofiler_wells.csv", index=False)
  rel = tmp_path / "relationships"
  rel.mkdir()
  relationships.to_csv(rel / "Planted.txt", index=False)
  (rel / "Planted_clusters.tsv").write_text(clusters)
  return tmp_path / "cellprofiler_wells.csv", rel


def test_cli_on_cellprofiler_csv_writes_recall_and_plots(tmp_path):
  # Every gene sits in one plate: the plate shifts go only with per-batch standardization
  # (EFAAR's tvn standardizes on pooled controls and whitens, without centering, per batch).
  csv, rel = _write_inputs(tmp_path)
  out = tmp_path / "out"
  proc = subprocess.run(
      [sys.executable, "-m", "maejax.benchmark", "--embeddings", str(csv), "--relationships",
       str(rel), "--out", str(out), "--correction", "tvn_per_batch", "--perturbation-col", "Gene",
       "--batch-col", "Plate", "--control-key", "non-targeting", "--n-null", "200", "--json"],
      cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 0, proc.stderr
  summary = json.loads(proc.stdout.strip().splitlines()[-1])
  assert summary["perturbations"] == 32 and summary["correction"] == "tvn_per_batch"
  recall = pd.read_csv(out / "recall.csv")
  assert {"database", "threshold", "lower", "upper", "recall", "pairs",
          "random_baseline"} <= set(recall.columns)
  assert recall.threshold.tolist() == ["5-95", "10-90"]
  assert (recall.pairs == 48).all()
  assert recall.recall.tolist() == pytest.approx([r["recall"] for r in summary["recall"]])
  assert (recall.recall > 2.5 * recall.random_baseline).all()  # planted complexes found
  curve = pd.read_csv(out / "recall_curve.csv")
  assert set(curve.database) == {"Planted", "random"}
  for png in ("recall_curve.png", "complex_heatmap.png", "replicate_consistency.png"):
    assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert "FileName_DNA" in proc.stderr  # a non-numeric column is announced, not silently used
  assert "Planted" in proc.stdout and "5-95" in proc.stdout


def test_tvn_beats_no_correction_under_batch_effects():
  table, relationships, _ = _cellprofiler_screen(seed=1, controls_per_plate=40)
  kwargs = dict(perturbation_col="Gene", batch_col="Plate", control_key="non-targeting",
                n_null=100)
  with pytest.warns(UserWarning, match="FileName_DNA"):
    none, tvn, center = (
        pipeline.run_benchmark(table, {"Planted": relationships},
                               pipeline.Settings(correction=correction, **kwargs))
        for correction in ("none", "tvn", "center_scale"))
  recall = {name: r["recall"].set_index("threshold").recall
            for name, r in (("none", none), ("tvn", tvn), ("center_scale", center))}
  assert recall["tvn"]["10-90"] > recall["none"]["10-90"] + 0.5
  assert recall["center_scale"]["10-90"] > recall["none"]["10-90"] + 0.5
  # replicate consistency is tested against wells of the same plates: a plate effect shared
  # by replicates does not make them look consistent once corrected.
  assert tvn["replicate_summary"]["fraction_significant"] > 0.3
  # controls never enter the map
  assert "non-targeting" not in set(tvn["map"].Metadata_Gene)


def test_cli_error_messages(tmp_path, capsys):
  csv, rel = _write_inputs(tmp_path)
  table = pd.read_csv(csv)
  drop = table.index[(table.Metadata_Gene == "non-targeting") & (table.Metadata_Plate == "P2")]
  table.drop(drop[1:]).to_csv(tmp_path / "few.csv", index=False)
  args = ["--embeddings", str(tmp_path / "few.csv"), "--relationships", str(rel), "--out",
          str(tmp_path / "o"), "--perturbation-col", "Gene", "--batch-col", "Plate"]
  with pytest.warns(UserWarning):
    assert cli.main(args + ["--control-key", "non-targeting"]) == 2
  assert "batch 'P2' has 1 control wells but" in capsys.readouterr().err
  with pytest.warns(UserWarning):
    assert cli.main(args) == 2
  err = capsys.readouterr().err
  assert "neither 'is_control' nor 'Metadata_is_control'" in err and "--control-key" in err
  with pytest.warns(UserWarning):
    assert cli.main(["--embeddings", str(csv), "--relationships", str(rel), "--out",
                     str(tmp_path / "o")]) == 2
  assert "neither 'perturbation' nor 'Metadata_perturbation'" in capsys.readouterr().err


SHARED = REPO / ".." / "shared" / "benchmarks" / "relationships"


@pytest.mark.filterwarnings("ignore:database .* none of its")
def test_cli_with_shared_relationship_databases(tmp_path):
  """Planted CORUM complexes in a synthetic map score far above random on CORUM."""
  if not SHARED.is_dir():
    pytest.skip(f"shared relationship files not found at {SHARED} (../shared beside the repo)")
  from maejax.eval import plots  # pylint: disable=import-outside-toplevel
  clusters = plots.read_clusters(SHARED / "CORUM_clusters.tsv")
  chosen = plots.select_complexes(clusters, sorted({g for m in clusters.values() for g in m}),
                                  min_genes=5, max_complexes=6, max_genes=40)
  rng = np.random.default_rng(0)
  rows = []
  for _, members in chosen:
    center = rng.normal(size=16) * 2
    for gene in members:
      for well in range(2):
        rows.append({"Metadata_experiment": f"e{well}", "Metadata_perturbation": gene,
                     "Metadata_is_control": False,
                     **{f"f{k}": v for k, v in enumerate(center + rng.normal(size=16))}})
  for gene in [f"NOT_A_GENE{i}" for i in range(100)]:  # background, in no database
    for well in range(2):
      rows.append({"Metadata_experiment": f"e{well}", "Metadata_perturbation": gene,
                   "Metadata_is_control": False,
                   **{f"f{k}": v for k, v in enumerate(rng.normal(size=16) * 2)}})
  for well in range(20):
    rows.append({"Metadata_experiment": f"e{well % 2}", "Metadata_perturbation": "EMPTY",
                 "Metadata_is_control": True,
                 **{f"f{k}": v for k, v in enumerate(rng.normal(size=16))}})
  pd.DataFrame(rows).to_parquet(tmp_path / "wells.parquet")
  out = tmp_path / "out"
  assert cli.main(["--embeddings", str(tmp_path / "wells.parquet"), "--relationships",
                   str(SHARED), "--out", str(out), "--correction", "center_scale",
                   "--n-null", "100"]) == 0
  recall = pd.read_csv(out / "recall.csv").set_index(["database", "threshold"])
  assert set(recall.index.get_level_values(0)) >= {"CORUM", "HuMAP", "Reactome", "SIGNOR",
                                                   "StringDB"}
  corum = recall.loc[("CORUM", "5-95")]
  assert corum.pairs > 50 and corum.recall > 3 * corum.random_baseline
  assert (out / "complex_heatmap.png").is_file()


def test_join_gives_a_narrow_feature_set_its_weight_back(tmp_path, capsys):
  """12 features that carry the complexes beside 150 of noise: concatenated, the noise
  dominates the cosines; joined at equal weight (--join), the complexes come back."""
  table, relationships, _ = _cellprofiler_screen(confounded=False, controls_per_plate=40)
  table.insert(0, "Metadata_well_id", table.Metadata_Plate + "_" + table.Metadata_Well)
  table = table.drop(columns="FileName_DNA")
  noise = pd.DataFrame(np.random.default_rng(0).normal(size=(len(table), 150)),
                       columns=[f"noise_{i}" for i in range(150)])
  noise.insert(0, "Metadata_well_id", table.Metadata_well_id)
  rel = tmp_path / "relationships"
  rel.mkdir()
  relationships.to_csv(rel / "Planted.txt", index=False)
  paths = {name: tmp_path / f"{name}.csv" for name in ("profiles", "noise", "both")}
  table.to_csv(paths["profiles"], index=False)
  noise.sample(frac=1, random_state=0).to_csv(paths["noise"], index=False)  # Other well order.
  pd.concat([table, noise.drop(columns="Metadata_well_id")], axis=1).to_csv(paths["both"],
                                                                           index=False)
  args = ["--relationships", str(rel), "--perturbation-col", "Gene", "--batch-col", "Plate",
          "--control-key", "non-targeting", "--n-null", "50", "--map-null-size", "0", "--json"]

  def recall(*extra):
    assert cli.main(args + ["--out", str(tmp_path / "out")] + list(extra)) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    return summary, {r["threshold"]: r["recall"] for r in summary["recall"]}

  summary, joined = recall("--embeddings", str(paths["profiles"]), "--join", str(paths["noise"]))
  assert summary["parts"] == [12, 150] and summary["wells"] == len(table)
  assert summary["provenance"]["joined"] == [str(paths["noise"])]
  _, concatenated = recall("--embeddings", str(paths["both"]))
  _, alone = recall("--embeddings", str(paths["profiles"]))
  assert joined["5-95"] >= concatenated["5-95"] + 0.2
  assert joined["10-90"] >= concatenated["10-90"] + 0.3
  assert alone["10-90"] >= joined["10-90"]  # The noise still costs something.

  noise.iloc[1:].to_csv(paths["noise"], index=False)
  assert cli.main(args + ["--out", str(tmp_path / "o"), "--embeddings", str(paths["profiles"]),
                          "--join", str(paths["noise"])]) == 2
  err = capsys.readouterr().err
  assert str(paths["noise"]) in err and "1 wells of" in err and "same wells" in err
  noise.drop(columns="Metadata_well_id").to_csv(paths["noise"], index=False)
  assert cli.main(args + ["--out", str(tmp_path / "o"), "--embeddings", str(paths["profiles"]),
                          "--join", str(paths["noise"])]) == 2
  assert "no Metadata_well_id column" in capsys.readouterr().err
