"""`python -m maejax.convert {openphenom,hf-vitmae} --checkpoint P --out DIR`: other projects'
MAE weights -> a `maejax.load`-able folder (maejax.convert does the mapping).

    python -m maejax.convert openphenom --checkpoint model.safetensors --out DIR \\
        [--model camae_s16] [--config.model.<field>=<value> ...]
    python -m maejax.convert hf-vitmae --checkpoint HF_DIR --out DIR
"""

from __future__ import annotations

import argparse
import functools
import sys
import warnings
from typing import Sequence

import ml_collections

from maejax import cli
from maejax import config as config_lib
from maejax import convert
from maejax import models
from maejax import workdir as workdir_lib


def parse_args(argv):
  p = argparse.ArgumentParser(prog="python -m maejax.convert", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = p.add_subparsers(dest="format", required=True)
  op = sub.add_parser("openphenom", formatter_class=argparse.RawDescriptionHelpFormatter,
                      help="Recursion's OpenPhenom (torch pickle model.safetensors)",
                      epilog=config_lib.fields_help(models.get_config("camae_s16"), "model."))
  op.add_argument("--model", default="camae_s16",
                  help="maejax model the checkpoint is read into (default camae_s16); its "
                       "fields are set with --config.model.<field>=<value>")
  hf = sub.add_parser("hf-vitmae",
                      help="a HuggingFace ViTMAEForPreTraining save_pretrained folder")
  for s in (op, hf):
    s.add_argument("--checkpoint", required=True,
                   help="the file (openphenom) or folder (hf-vitmae)")
    s.add_argument("--out", required=True, help="output directory (maejax.load-able)")
    cli.add_json_flag(s)
  return cli.parse(p, argv)


def convert_checkpoint(args, overrides) -> dict:
  """Reads, maps and writes the weights; returns the summary."""
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    if args.format == "openphenom":
      config = ml_collections.ConfigDict({"model": models.get_config(args.model)})
      config_lib.apply_overrides(config, overrides)
      model, cfg = convert.convert_openphenom(convert.load_openphenom_state_dict(args.checkpoint),
                                              config.model)
    else:
      if overrides:
        raise ValueError(f"{overrides[0]}: hf-vitmae reads the model from the folder's "
                         "config.json; --config.* overrides apply to openphenom only")
      model, cfg = convert.convert_hf_vitmae(*convert.load_hf_vitmae(args.checkpoint))
  notes = [str(w.message) for w in caught]
  for note in notes:
    print(f"warning: {note}", file=sys.stderr)
  source = str(workdir_lib.path(args.checkpoint))
  out = convert.save(model, cfg, args.out, {"format": args.format, "checkpoint": source})
  return {"format": args.format, "checkpoint": source, "out": out, "model": cfg.name,
          "params": convert.count_params(model), "pos_layout": cfg.pos_layout, "warnings": notes}


def _show(s: dict) -> None:
  print(f"wrote {s['out']}: model {s['model']}, {s['params']:,} parameters, {s['pos_layout']} "
        f"sin-cos positions; use maejax.load({s['out']!r})")


def main(argv: Sequence[str] | None = None) -> int:
  args, overrides = parse_args(argv)
  return cli.report(args, functools.partial(convert_checkpoint, args, overrides), _show)
