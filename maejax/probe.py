"""CellProfiler feature probe of one or more models (Kraus et al. 2024, feature probing).

  python -m maejax.probe --checkpoint DIR [--checkpoint DIR2 ...] [--model vit_tiny] \
      --data synthetic|partseg|folder:PATH --out results/probe --json

Crops (64 px by default) are segmented (Otsu + watershed), measured with cp_measure, and a
cross-validated ridge regression from each model's crop embeddings predicts every feature.
Writes to --out: probe_summary.csv (model, category, median_r2, n_features),
probe_features.csv (R^2 of every feature), cellprofiler_features.parquet (the measurements),
probe.png (grouped bars). `--model NAME` adds a randomly initialised registry model, the
baseline an embedding must beat. `--data partseg` uses the real 4-channel confocal stack the
partsegdata package ships (channel 3 = DNA).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from maejax.eval import probe


def load_crops(data: str, crop_size: int, max_crops: int, seed: int):
  """--data value -> (crops uint8 [n, h, w, c], metadata, channel names, nuclei, cell)."""
  import maejax.data as md  # pylint: disable=g-import-not-at-top
  if data == "partseg":
    crops, meta = probe.partseg_crops(crop_size)
    if len(crops) > max_crops:
      keep = np.sort(np.random.default_rng(seed).choice(len(crops), max_crops, replace=False))
      crops, meta = crops[keep], meta.iloc[keep].reset_index(drop=True)
    return crops, meta, probe.PARTSEG_CHANNELS, 3, 0
  config = md.default_config()
  if data == "synthetic":
    config.source = "synthetic"
  elif data.startswith("folder:"):
    config.source, config.path = "folder", os.path.expanduser(data[len("folder:"):])
    if not os.path.isdir(config.path):
      raise FileNotFoundError(f"--data {data}: {config.path} is not a directory (expected an "
                              "image folder with metadata.csv, see maejax.data)")
  else:
    raise ValueError(f"--data {data!r}: expected synthetic, partseg or folder:PATH")
  source = md.make_source(config)
  crops, meta = probe.source_crops(source, crop_size, max_crops=max_crops, seed=seed)
  names = tuple(source.channel_names)
  return crops, meta, names, 0, 2 if len(names) > 2 else len(names) - 1


def embedders(checkpoints: Sequence[str], model_names: Sequence[str], channels: int, seed: int):
  """{label: Model} for checkpoints (maejax.load) and random-weight registry models."""
  import maejax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from maejax import api, models  # pylint: disable=g-import-not-at-top
  out = {}
  for path in checkpoints:
    label = Path(path).resolve().name
    out[label if label not in out else str(path)] = maejax.load(path)
  for name in model_names:
    config = models.get_config(name)
    if "channels" in config:
      config.channels = channels
    if "decoder_channels" in config:
      config.decoder_channels = channels
    module = models.create(config, rngs=nnx.Rngs(seed))
    out[f"{name} (random)"] = api.Model(module, {"model": config.to_dict()})
  if not out:
    raise ValueError("nothing to probe: pass --checkpoint DIR and/or --model NAME")
  return out


def run(args) -> dict:
  start = time.perf_counter()
  crops, meta, names, nuclei, cell = load_crops(args.data, args.crop_size, args.max_crops,
                                                args.seed)
  nuclei = nuclei if args.nuclei_channel is None else args.nuclei_channel
  cell = cell if args.cell_channel is None else args.cell_channel
  models = embedders(args.checkpoint, args.model, crops.shape[-1], args.seed)
  for model in models.values():
    model.embed(crops[:1], batch_size=1)  # wrong channels or sizes fail now, not after measuring
  features, categories = probe.measure(crops, names, nuclei_channel=nuclei, cell_channel=cell,
                                       max_objects=args.max_objects)
  measured_s = time.perf_counter() - start
  embeddings = {label: model.embed(crops) for label, model in models.items()}
  per_feature, summary = probe.run_probe(features, categories, embeddings,
                                         groups=meta["group"].to_numpy(), folds=args.folds,
                                         seed=args.seed)
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  files = [out / "probe_summary.csv", out / "probe_features.csv",
           out / "cellprofiler_features.parquet"]
  summary.to_csv(files[0], index=False)
  per_feature.to_csv(files[1], index=False)
  features.assign(**{f"Metadata_{k}": meta[k].to_numpy() for k in meta.columns
                     if k in ("group", "tile_y", "tile_x", "site_index", "perturbation")}
                  ).to_parquet(files[2], index=False)
  files.append(probe.plot_probe(summary, out / "probe.png",
                                title=f"CellProfiler feature probe ({args.data})"))
  with_nuclei = int((features["Metadata_n_nuclei"] > 0).sum())
  return dict(
      data=args.data, crops=int(len(crops)), crops_with_nuclei=with_nuclei,
      features=int(per_feature.feature.nunique()), models=list(embeddings),
      median_r2={m: {r.category: round(float(r.median_r2), 4)
                     for r in summary[summary.model == m].itertuples()}
                 for m in embeddings},
      measure_seconds=round(measured_s, 1),
      seconds=round(time.perf_counter() - start, 1), files=[str(f) for f in files])


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m maejax.probe", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--checkpoint", action="append", default=[],
                      help="maejax model directory (maejax.load); repeat for several models")
  parser.add_argument("--model", action="append", default=[],
                      help="registry model name with random weights (baseline); repeatable")
  parser.add_argument("--data", default="synthetic",
                      help="synthetic | partseg (PartSegData's confocal stack) | folder:PATH")
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument("--crop-size", type=int, default=64)
  parser.add_argument("--max-crops", type=int, default=192,
                      help="crops measured (~0.3 s each for 6 channels on one core)")
  parser.add_argument("--max-objects", type=int, default=8,
                      help="largest nuclei (and their cells) measured per crop")
  parser.add_argument("--nuclei-channel", type=int, default=None,
                      help="channel index of the DNA stain (default: 0; partseg: 3)")
  parser.add_argument("--cell-channel", type=int, default=None,
                      help="channel outlining cells (default: 2 = actin; partseg: 0)")
  parser.add_argument("--folds", type=int, default=5, help="cross-validation folds")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--json", action="store_true",
                      help="print one JSON summary object as the last stdout line")
  args = parser.parse_args(argv)
  if args.crop_size < 16 or args.max_crops < 10 or args.folds < 2:
    parser.error("need --crop-size >= 16, --max-crops >= 10 and --folds >= 2")
  return args


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(argv)
  try:
    info = run(args)
  except (ValueError, FileNotFoundError, ImportError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"{info['crops']} crops ({info['crops_with_nuclei']} with nuclei), "
        f"{info['features']} features, {info['seconds']} s")
  cats = [c for c in probe.CATEGORIES if any(c in v for v in info["median_r2"].values())]
  print(f"{'median R^2':28s}" + "".join(f"{c[:12]:>13s}" for c in cats))
  for model, row in info["median_r2"].items():
    print(f"{model[:28]:28s}" + "".join(f"{row.get(c, float('nan')):13.3f}" for c in cats))
  print(f"wrote {len(info['files'])} files to {args.out}")
  if args.json:
    print(json.dumps(info))
  return 0


if __name__ == "__main__":
  sys.exit(main())
