"""What the user sees: progress bar, metrics.jsonl, TensorBoard events, reconstruction PNGs.

Only process 0 writes; on other processes every writer is a no-op.
"""

import json
import math
import os
import sys
from typing import Any

import jax
import matplotlib
import numpy as np
from tensorboardX import SummaryWriter
from tensorboardX import record_writer
from tqdm import tqdm

from maejax import config as config_lib
from maejax import workdir as workdir_lib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

# Dense bf16 peak FLOP/s per device (vendor figures, no sparsity).
PEAK_TFLOPS = {
    "H100": 989.0, "H200": 989.0, "GH200": 989.0, "B200": 2250.0, "A100": 312.0,
    "L4": 121.0, "A10": 125.0, "V100": 125.0,
    "TPU v4": 275.0, "TPU v5 lite": 197.0, "TPU v5e": 197.0, "TPU v5p": 459.0,
    "TPU v5": 459.0, "TPU v6 lite": 918.0, "TPU v6e": 918.0, "TPU7x": 2307.0,
}


def peak_tflops_per_device(config=None) -> float | None:
  """The config's `peak_tflops_per_device` if set, else the accelerator's; None if unknown."""
  if config is not None and float(config.get("peak_tflops_per_device", -1)) > 0:
    return float(config.peak_tflops_per_device)
  return peak_tflops(jax.devices()[0].device_kind)


def peak_tflops(device_kind: str) -> float | None:
  """Dense bf16 peak TFLOP/s of a device kind ("NVIDIA H100 80GB HBM3", "TPU v5"), or None."""
  for name in sorted(PEAK_TFLOPS, key=len, reverse=True):  # Longest match first.
    if name.lower() in device_kind.lower():
      return PEAK_TFLOPS[name]
  return None


def throughput(images: int, seconds: float, flops_per_image: float | None,
               peak_tflops: float | None, num_devices: int) -> dict[str, float]:
  """images/s, and (when FLOPs are known) TFLOP/s over all devices and MFU."""
  out = {"images_per_s": images / max(seconds, 1e-9)}
  if flops_per_image:
    out["tflops"] = out["images_per_s"] * flops_per_image / 1e12
    if peak_tflops:
      out["mfu"] = out["tflops"] / (peak_tflops * num_devices)
  return out


class Writer:
  """metrics.jsonl (one object per logged step) and TensorBoard scalars, reconstruction
  images and the config text under `workdir`.

  `start_step`: the step a run starts from. Rows of later steps (logged by a run that was
  killed after its last checkpoint) are dropped from metrics.jsonl and hidden from TensorBoard
  (its `purge_step`), so that after a resume every step appears once.
  """

  def __init__(self, workdir, start_step: int = 0):
    self.active = jax.process_index() == 0
    self._tb = self._jsonl = None
    if not self.active:
      return
    root = workdir_lib.path(workdir)
    self.path = root / workdir_lib.METRICS
    self._lines = [line for line in _read_lines(self.path)
                   if json.loads(line).get("step", 0) <= start_step]
    workdir_lib.write_text(self.path, "".join(self._lines))
    self._remote = "://" in os.fspath(root)
    self._jsonl = None if self._remote else self.path.open("a")
    tb_dir = root / workdir_lib.TENSORBOARD
    if self._remote:
      record_writer.register_writer_factory(os.fspath(tb_dir).split(":")[0], _EpathFactory())
    self._tb = SummaryWriter(os.fspath(tb_dir), purge_step=start_step + 1)

  def write(self, step: int, scalars: dict[str, Any]) -> None:
    if not self.active:
      return
    row = {"step": int(step)}
    row.update({k: workdir_lib.jsonable(v) for k, v in scalars.items()})
    line = json.dumps(row) + "\n"
    self._lines.append(line)
    if self._remote:  # Object stores have no append: the file is written whole.
      workdir_lib.write_text(self.path, "".join(self._lines))
    else:
      self._jsonl.write(line)
      self._jsonl.flush()
    for k, v in row.items():
      if k != "step" and isinstance(v, (int, float)) and v is not None:
        self._tb.add_scalar(k, v, step)
    self._tb.flush()

  def config(self, config, step: int = 0) -> None:
    """The run's config as TensorBoard text (tag `config`), once at the start of a run."""
    if not self.active:
      return
    # Four-space indent: a Markdown code block, so the text plugin keeps the layout.
    text = "\n".join("    " + line for line in config_lib.to_json(config).splitlines())
    self._tb.add_text("config", text, step)
    self._tb.flush()

  def reconstruction(self, path, recon: dict[str, np.ndarray], step: int,
                     channel_names=None) -> None:
    """The reconstruction figure (see `reconstruction_figure`) as a PNG at `path` and as
    TensorBoard image `reconstruction` at `step`."""
    if not self.active:
      return
    fig = reconstruction_figure(recon, step, channel_names)
    workdir_lib.write_figure(fig, path, dpi=80)
    self._tb.add_figure("reconstruction", fig, step, close=True)
    self._tb.flush()

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


def _read_lines(file) -> list[str]:
  if not file.exists():
    return []
  return [line + "\n" for line in file.read_text().splitlines() if line.strip()]


class _EpathFactory:
  """TensorBoard event files on a bucket, written whole through epath at each flush."""

  def directory_check(self, path):
    workdir_lib.path(path).mkdir(parents=True, exist_ok=True)

  def open(self, path):
    return _EpathRecordFile(path)


class _EpathRecordFile:
  """The writer tensorboardX asks its factory for: write, flush, close."""

  def __init__(self, path):
    self.file, self.data, self.closed = workdir_lib.path(path), bytearray(), False

  def write(self, data):
    self.data += data

  def flush(self):
    self.file.write_bytes(bytes(self.data))

  def close(self):
    if not self.closed:
      self.flush()
      self.closed = True


class Progress:
  """Process 0's view of the run: a tqdm bar on a terminal, else (`enabled=False`, or output
  to a file, e.g. a SLURM log) one plain line per logged step: step, loss, images/s, TFLOP/s,
  MFU and ETA."""

  def __init__(self, start: int, total: int, enabled: bool = True, *, batch_size: int = 1,
               stream=None):
    self.total, self.batch_size, self.bar, self.plain = total, batch_size, None, False
    if jax.process_index() != 0:
      return
    self.stream = stream or sys.stdout
    if enabled and sys.stderr.isatty():
      self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)
    else:
      self.plain = True

  def update(self, n: int = 1) -> None:
    if self.bar is not None:
      self.bar.update(n)

  def log(self, step: int, scalars: dict) -> None:
    """The logged step's scalars: the bar's postfix, or one line."""
    post = {"loss": f"{scalars['loss']:.4f}"}
    if "images_per_s" in scalars:
      post["img/s"] = f"{scalars['images_per_s']:.1f}"
    if "tflops" in scalars:
      post["TFLOP/s"] = f"{scalars['tflops']:.2f}"
    post["MFU"] = f"{100 * scalars['mfu']:.1f}%" if "mfu" in scalars else "n/a"
    if self.bar is not None:
      self.bar.set_postfix(post, refresh=False)
    elif self.plain:
      rate = scalars.get("images_per_s", 0.0) / self.batch_size  # steps/s
      post["ETA"] = (_duration((self.total - step) / rate) if rate > 0 and step < self.total
                     else "n/a" if step < self.total else "0s")
      print(f"step {step}/{self.total}: " + ", ".join(
          f"{k} {v}" if k != "img/s" else f"{v} {k}" for k, v in post.items()),
            file=self.stream, flush=True)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()


def _duration(seconds: float) -> str:
  """3725 -> '1h02m', 125 -> '2m05s', 42 -> '42s'."""
  s = int(round(seconds))
  if s >= 3600:
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
  return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def reconstruction_figure(recon: dict[str, np.ndarray], step: int,
                          channel_names=None) -> "plt.Figure":
  """One figure: rows = channels (named by `channel_names`, e.g. the source's stains),
  columns = masked input / reconstruction / target.

  recon: {"pred", "target", "mask"} float [height, width, channels] for one image
  (standardized units; mask 1 = hidden from the encoder).
  """
  target, pred, mask = (np.asarray(recon[k], np.float32) for k in ("target", "pred", "mask"))
  channels = target.shape[-1]
  names = list(channel_names or [])
  names = names if len(names) == channels else [f"channel {c}" for c in range(channels)]
  fig, axes = plt.subplots(channels, 3, figsize=(6, 2 * channels), squeeze=False)
  for c in range(channels):
    lo, hi = np.percentile(target[..., c], [1, 99])
    masked = np.where(mask[..., c] > 0.5, np.nan, target[..., c])
    for j, (img, title) in enumerate([(masked, "masked input"), (pred[..., c], "reconstruction"),
                                      (target[..., c], "target")]):
      ax = axes[c, j]
      ax.imshow(img, cmap="gray", vmin=lo, vmax=hi)
      ax.set_xticks([])
      ax.set_yticks([])
      if c == 0:
        ax.set_title(title, fontsize=9)
    axes[c, 0].set_ylabel(names[c], fontsize=9)
  fig.suptitle(f"step {step}", fontsize=10)
  fig.tight_layout()
  return fig


def save_reconstruction_png(path, recon: dict[str, np.ndarray], step: int,
                            channel_names=None) -> None:
  """`reconstruction_figure` written as a PNG to `path` (local or bucket)."""
  fig = reconstruction_figure(recon, step, channel_names)
  workdir_lib.write_figure(fig, path, dpi=80)
  plt.close(fig)
