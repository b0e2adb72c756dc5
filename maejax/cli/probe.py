"""CellProfiler feature probe of one or more models (Kraus et al. 2024, feature probing).

  python -m maejax.probe --checkpoint DIR [--checkpoint DIR2 ...] [--model vit_tiny] \
      --data synthetic|partseg|folder:PATH --out results/probe --json

Crops (64 px by default) are segmented (Otsu + watershed), measured with cp_measure, and a
cross-validated ridge regression from each model's crop embeddings predicts every feature
(maejax.eval.probe). Writes to --out: probe_summary.csv (model, category, median_r2,
n_features), probe_features.csv (R^2 of every feature), cellprofiler_features.parquet (the
measurements), probe.png (grouped bars). `--model NAME` adds a randomly initialised registry
model, the baseline an embedding must beat. `--data partseg` uses the real 4-channel confocal
stack the partsegdata package ships (channel 3 = DNA).

`--config.data.<field>=<value>` changes the screen of `--data synthetic|folder:PATH` (e.g.
--config.data.synthetic.site_size=128); `--config.model.<field>=<value>` changes every
`--model` config (e.g. --config.model.depth=4; fields: maejax.get_config(NAME)).
"""

from __future__ import annotations

import functools
import os
import time
from typing import Sequence

import ml_collections
import numpy as np

from maejax import cli
from maejax import config as config_lib
from maejax import data as data_lib
from maejax import models
from maejax.eval import probe

MODEL_PREFIX = "config.model."


def split_overrides(overrides: Sequence[str]) -> tuple[list[str], list[str]]:
  """(data overrides, model overrides): `--config.model.*` sets the --model configs."""
  model = [o for o in overrides if o.lstrip("-").startswith(MODEL_PREFIX)]
  return [o for o in overrides if o not in model], model


def data_config_for(data: str,
                    overrides: Sequence[str] = ()) -> ml_collections.ConfigDict | None:
  """--data synthetic | folder:PATH -> a data ConfigDict with the overrides; partseg -> None."""
  if data == "partseg":
    if overrides:
      raise ValueError(f"{overrides[0]}: --data partseg reads one fixed stack; --config.data.* "
                       "sets the screen of --data synthetic or folder:PATH")
    return None
  root = ml_collections.ConfigDict({"data": data_lib.default_config()})
  if data == "synthetic":
    root.data.source = "synthetic"
  elif data.startswith("folder:"):
    root.data.source, root.data.path = "folder", os.path.expanduser(data[len("folder:"):])
  else:
    raise ValueError(f"--data {data!r}: expected synthetic, partseg or folder:PATH")
  config_lib.apply_overrides(root, overrides)
  if root.data.source == "folder" and not os.path.isdir(root.data.path):
    raise FileNotFoundError(f"--data {data}: {root.data.path} is not a directory (expected an "
                            "image folder with metadata.csv, see maejax.data)")
  return root.data


def load_crops(data: str, crop_size: int, max_crops: int, seed: int, overrides=()):
  """--data value -> (crops uint8 [n, h, w, c], metadata, channel names, nuclei channel,
  cell channel)."""
  return crop_set(data_config_for(data, overrides), crop_size, max_crops, seed)


def crop_set(config: ml_collections.ConfigDict | None, crop_size: int, max_crops: int,
             seed: int):
  """load_crops of a data config (None: the PartSegData stack)."""
  if config is None:
    crops, meta = probe.sample_crops(*probe.partseg_crops(crop_size), max_crops, seed)
    return crops, meta, probe.PARTSEG_CHANNELS, 3, 0
  source = data_lib.make_source(config)
  crops, meta = probe.source_crops(source, crop_size, max_crops=max_crops, seed=seed)
  names = tuple(source.channel_names)
  return crops, meta, names, 0, 2 if len(names) > 2 else len(names) - 1


def random_configs(names: Sequence[str], channels: int,
                   overrides: Sequence[str] = ()) -> dict[str, ml_collections.ConfigDict]:
  """{name: registry model config} for `channels`-channel crops, with the overrides."""
  if overrides and not names:
    raise ValueError(f"{overrides[0]}: --config.model.* sets fields of the --model configs; "
                     "pass --model NAME")
  out = {}
  for name in names:
    config = models.get_config(name)
    for field in ("channels", "decoder_channels"):
      if field in config:
        config[field] = channels
    root = config_lib.apply_overrides(ml_collections.ConfigDict({"model": config}), overrides)
    out[name] = root.model
  return out


def parse_args(argv: Sequence[str] | None = None):
  p = cli.parser("python -m maejax.probe", __doc__,
                 ml_collections.ConfigDict({"data": data_lib.default_config()}), progress=True)
  p.add_argument("--checkpoint", action="append", default=[],
                 help="maejax model directory (maejax.load); repeat for several models")
  p.add_argument("--model", action="append", default=[],
                 help="registry model name with random weights (baseline); repeatable")
  p.add_argument("--data", default="synthetic",
                 help="synthetic | partseg (PartSegData's confocal stack) | folder:PATH")
  p.add_argument("--out", required=True, help="output directory")
  p.add_argument("--crop-size", type=int, default=64)
  p.add_argument("--max-crops", type=int, default=192,
                 help="crops measured (~0.3 s each for 6 channels on one core)")
  p.add_argument("--max-objects", type=int, default=8,
                 help="largest nuclei (and their cells) measured per crop")
  p.add_argument("--nuclei-channel", type=int, default=None,
                 help="channel index of the DNA stain (default: 0; partseg: 3)")
  p.add_argument("--cell-channel", type=int, default=None,
                 help="channel outlining cells (default: 2 = actin; partseg: 0)")
  p.add_argument("--folds", type=int, default=5, help="cross-validation folds")
  p.add_argument("--seed", type=int, default=0)
  args, overrides = cli.parse(p, argv)
  if args.crop_size < 16 or args.max_crops < 10 or args.folds < 2:
    p.error("need --crop-size >= 16, --max-crops >= 10 and --folds >= 2")
  return args, overrides


def run(args, overrides: Sequence[str] = ()) -> dict:
  start = time.perf_counter()
  data_overrides, model_overrides = split_overrides(overrides)
  data = data_config_for(args.data, data_overrides)
  channels = len(probe.PARTSEG_CHANNELS) if data is None else len(data.channels)
  configs = random_configs(args.model, channels, model_overrides)  # Bad fields fail now.
  crops, meta, names, nuclei, cell = crop_set(data, args.crop_size, args.max_crops, args.seed)
  nuclei = nuclei if args.nuclei_channel is None else args.nuclei_channel
  cell = cell if args.cell_channel is None else args.cell_channel
  embedders = probe.load_models(args.checkpoint, configs, args.seed)
  for model in embedders.values():
    model.embed(crops[:1], batch_size=1)  # Wrong channels or sizes fail now, not after measuring.
  features, categories = probe.measure(crops, names, nuclei_channel=nuclei, cell_channel=cell,
                                       max_objects=args.max_objects, progress=args.progress)
  measured_s = time.perf_counter() - start
  embeddings = {label: model.embed(crops) for label, model in embedders.items()}
  per_feature, summary = probe.run_probe(features, categories, embeddings,
                                         groups=meta["group"].to_numpy(), folds=args.folds,
                                         seed=args.seed)
  files = probe.write_outputs(args.out, per_feature, summary, features, meta,
                              title=f"CellProfiler feature probe ({args.data})")
  return dict(
      data=args.data, crops=len(crops),
      crops_with_nuclei=int((features["Metadata_n_nuclei"] > 0).sum()),
      features=int(per_feature.feature.nunique()), models=list(embeddings),
      median_r2={m: {r.category: round(float(r.median_r2), 4)
                     for r in summary[summary.model == m].itertuples()}
                 for m in embeddings},
      measure_seconds=round(measured_s, 1),
      seconds=round(time.perf_counter() - start, 1), files=files)


def _report(info: dict, out: str) -> None:
  print(f"{info['crops']} crops ({info['crops_with_nuclei']} with nuclei), "
        f"{info['features']} features, {info['seconds']} s")
  cats = [c for c in probe.CATEGORIES if any(c in v for v in info["median_r2"].values())]
  print(f"{'median R^2':28s}" + "".join(f"{c[:12]:>13s}" for c in cats))
  for model, row in info["median_r2"].items():
    print(f"{model[:28]:28s}" + "".join(f"{row.get(c, np.nan):13.3f}" for c in cats))
  print(f"wrote {len(info['files'])} files to {out}")


def main(argv: Sequence[str] | None = None) -> int:
  args, overrides = parse_args(argv)
  return cli.report(args, functools.partial(run, args, overrides),
                    functools.partial(_report, out=args.out))
