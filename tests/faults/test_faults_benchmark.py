"""Fault injection: degenerate well tables given to `python -m maejax.benchmark`.

Repeated rows and constant features are dropped with one warning and score as the clean table;
conflicting wells, constant or empty tables are one line, exit 2, and leave --out as it was;
figures the table is too small for are n/a with a reason (null in --json).
"""

import contextlib
import io
import json
import pathlib
import warnings

import numpy as np
import pandas as pd
import pytest

from maejax.cli import benchmark as benchmark_cli
from maejax.eval import plots
from tests.eval.test_eval_benchmark import _synthetic_wells
from tests.faults.test_faults_workdir import _digest, _one_error

pytestmark = pytest.mark.faults

FAST = ["--n-null", "50", "--map-null-size", "100", "--json"]


def _run(table_file, out):
  """(exit code, stdout, the --json object or None, maejax warnings as printed)."""
  stdout = io.StringIO()
  with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(stdout):
    warnings.simplefilter("always")
    rc = benchmark_cli.main(["--embeddings", str(table_file), "--out", str(out), *FAST])
  lines = [warnings.formatwarning(w.message, w.category, w.filename, w.lineno) for w in caught]
  text = stdout.getvalue()
  return rc, text, json.loads(text.splitlines()[-1]) if rc == 0 else None, lines


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
  """The clean synthetic well table, scored into out/: (dir, table, --json, out digest)."""
  root = tmp_path_factory.mktemp("bench")
  table, _ = _synthetic_wells()
  table.to_csv(root / "wells.csv", index=False)
  rc, _, summary, _ = _run(root / "wells.csv", root / "out")
  assert rc == 0
  return root, table, summary, _digest(root / "out")


def _replicate_figures(summary):
  return summary["replicate_consistency"], summary["mean_average_precision"]["replicates"]


def test_repeated_rows_are_dropped_with_one_warning_and_score_as_the_clean_table(scored):
  root, table, clean, _ = scored
  doubled = pd.concat([table, table.sample(40, random_state=0)], ignore_index=True)
  doubled.to_csv(root / "doubled.csv", index=False)
  rc, _, summary, lines = _run(root / "doubled.csv", root / "out_doubled")
  assert rc == 0
  dropped = [w for w in lines if "duplicated" in w]
  assert dropped == [f"warning: {root / 'doubled.csv'}: dropping 40 duplicated rows (the same "
                     "metadata and features as an earlier row)\n"]
  assert summary["wells"] == clean["wells"] == len(table)
  assert _replicate_figures(summary) == _replicate_figures(clean)
  assert summary["recall"] == clean["recall"]


def test_one_well_in_two_differing_rows_is_one_line_naming_file_and_well(scored, capsys):
  root, table, _, before = scored
  conflict = table.iloc[[0]].assign(feature_0=table.feature_0.iloc[0] + 1.0)
  pd.concat([table, conflict], ignore_index=True).to_csv(root / "conflict.csv", index=False)
  rc, _, _, _ = _run(root / "conflict.csv", root / "out")
  err = _one_error(capsys)
  well = "_".join(table.iloc[0][["Metadata_experiment", "Metadata_plate", "Metadata_well"]]
                  .astype(str))
  assert rc == 2 and str(root / "conflict.csv") in err and well in err, err
  assert _digest(root / "out") == before


def test_constant_feature_is_dropped_with_one_warning(scored):
  root, table, clean, _ = scored
  table.assign(feature_flat=3.0).to_csv(root / "flat.csv", index=False)
  rc, _, summary, lines = _run(root / "flat.csv", root / "out_flat")
  assert rc == 0
  assert [w for w in lines if "constant" in w] == [
      f"warning: {root / 'flat.csv'}: dropping 1 features constant over all wells: "
      "['feature_flat']\n"]
  assert _replicate_figures(summary) == _replicate_figures(clean)
  assert summary["recall"] == clean["recall"]


def test_table_of_constant_features_is_an_error(scored, capsys):
  root, table, _, before = scored
  features = [c for c in table.columns if c.startswith("feature_")]
  table.assign(**{c: 1.0 for c in features}).to_csv(root / "all_flat.csv", index=False)
  rc, _, _, _ = _run(root / "all_flat.csv", root / "out")
  err = _one_error(capsys)
  assert rc == 2 and str(root / "all_flat.csv") in err and "constant" in err, err
  assert _digest(root / "out") == before


@pytest.mark.parametrize("name, write", [
    ("header_only.csv", lambda t, f: t.iloc[:0].to_csv(f, index=False)),
    ("zero_bytes.csv", lambda t, f: f.write_bytes(b"")),
    ("no_rows.parquet", lambda t, f: t.iloc[:0].to_parquet(f)),
])
def test_empty_table_is_one_line_naming_the_file(scored, capsys, name, write):
  root, table, _, before = scored
  write(table, root / name)
  rc, _, _, _ = _run(root / name, root / "out")
  err = _one_error(capsys)
  assert rc == 2 and f"{root / name} holds no wells" in err and "control" not in err, err
  assert _digest(root / "out") == before


def test_no_replicates_is_n_a_with_the_reason(scored):
  root, table, _, _ = scored
  treated = table[~table.Metadata_is_control]
  single = pd.concat([treated.drop_duplicates("Metadata_perturbation"),
                      table[table.Metadata_is_control]])
  single.to_csv(root / "single.csv", index=False)
  rc, text, summary, _ = _run(root / "single.csv", root / "out_single")
  assert rc == 0
  assert "replicate consistency: n/a (no perturbation has 2 or more replicate wells)" in text
  assert "replicate mAP (copairs, vs controls): n/a (no perturbation has 2 or more" in text
  consistency, replicate_map = _replicate_figures(summary)
  assert consistency["median_cosine"] is None and consistency["fraction_significant"] is None
  assert replicate_map["mean_average_precision"] is None and replicate_map["reason"]
  assert all(r["recall"] is not None for r in summary["recall"])  # 60 genes: recall stands


def test_recall_of_a_map_too_small_for_its_tails_is_n_a(scored):
  # 6 perturbations: 15 random pairs, none in a 5% tail (0.75 pairs); a 10% tail holds one.
  root, table, _, _ = scored
  _, screen = _synthetic_wells()
  genes = ["G000", "G001", "G002", "G004", "G005", "G006"]
  small = table[table.Metadata_perturbation.isin(genes + ["EMPTY"])]
  small.to_csv(root / "small.csv", index=False)
  screen.relationships.to_csv(root / "pairs.csv", index=False)
  stdout = io.StringIO()
  with warnings.catch_warnings(), contextlib.redirect_stdout(stdout):
    warnings.simplefilter("ignore")
    rc = benchmark_cli.main(["--embeddings", str(root / "small.csv"), "--relationships",
                             str(root / "pairs.csv"), "--out", str(root / "out_small"), *FAST])
  assert rc == 0
  recall = {r["threshold"]: r for r in json.loads(stdout.getvalue().splitlines()[-1])["recall"]}
  assert recall["5-95"]["recall"] is None and recall["5-95"]["random_baseline"] == 0
  assert "too few perturbations" in recall["5-95"]["reason"]
  assert recall["10-90"]["recall"] is not None and recall["10-90"]["reason"] is None
  assert "n/a (too few perturbations" in stdout.getvalue()
  assert np.isnan(pd.read_csv(root / "out_small" / "recall.csv").set_index("threshold")
                  .loc["5-95", "recall"])


def test_missing_clusters_file_is_one_line_and_leaves_out_as_it_was(scored, capsys):
  root, _, _, before = scored
  rc = benchmark_cli.main(["--embeddings", str(root / "wells.csv"), "--out", str(root / "out"),
                           "--clusters", str(root / "no_such_clusters.tsv"), *FAST])
  err = _one_error(capsys)
  assert rc == 2 and "no_such_clusters.tsv" in err, err
  assert _digest(root / "out") == before


def test_outputs_of_an_earlier_run_not_written_again_are_removed(scored, tmp_path):
  root, _, _, _ = scored
  args = ["--embeddings", str(root / "wells.csv"), "--out", str(tmp_path), *FAST]
  with contextlib.redirect_stdout(io.StringIO()):
    assert benchmark_cli.main([*args, "--h5ad"]) == 0
    assert (tmp_path / "corrected_wells.h5ad").exists()
    (tmp_path / "notes.txt").write_text("the user's own file")
    assert benchmark_cli.main(args) == 0
  assert not (tmp_path / "corrected_wells.h5ad").exists()
  assert (tmp_path / "notes.txt").read_text() == "the user's own file"


def test_a_run_failing_while_it_writes_leaves_out_as_it_was(scored, monkeypatch, capsys):
  root, _, _, before = scored

  def fail(*args, **kwargs):
    raise OSError("disk full")

  monkeypatch.setattr(plots, "plot_replicate_consistency", fail)
  with pytest.raises(OSError), contextlib.redirect_stdout(io.StringIO()):
    benchmark_cli.main(["--embeddings", str(root / "wells.csv"), "--out", str(root / "out"),
                        *FAST])
  assert _digest(root / "out") == before
  assert not [p.name for p in root.iterdir() if p.name.startswith(".out.")]


def test_out_as_the_working_directory_is_written_in_place(scored, tmp_path, monkeypatch):
  root, _, _, _ = scored
  monkeypatch.chdir(tmp_path)
  args = ["--embeddings", str(root / "wells.csv"), "--out", ".", *FAST]
  with contextlib.redirect_stdout(io.StringIO()):
    assert benchmark_cli.main(args) == 0
    inode = tmp_path.stat().st_ino
    assert benchmark_cli.main(args) == 0  # Holds only benchmark outputs now: no swap of cwd.
  assert tmp_path.stat().st_ino == inode and (tmp_path / "recall.csv").exists()
  assert pathlib.Path.cwd() == tmp_path
