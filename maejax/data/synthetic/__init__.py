"""A deterministic, Cell Painting-like synthetic screen: maejax's embedded default data.

Genes are grouped into complexes; the knock-down of each gene in a complex shifts a few
morphological factors (`FACTOR_NAMES`) in the complex's shared direction (genes differ only in
strength), a few genes have no phenotype and negative-control wells (`EMPTY`) have none. The
factors change cell and nucleus size and shape, texture, organelle count, sub-cellular
position and the spatial arrangement of cells, not only brightness. The factors in
`MORPHOLOGY_ONLY` leave each channel's pixel-intensity distribution unchanged (an affine or
radial reshaping of a cell keeps the distribution of its normalised distances; larger cells
come with proportionally fewer of them), and the complexes marked `intensity_matched` use only
those: per-channel statistics (mean, std, percentiles) see nothing of them, a segmentation
does. Cells are rendered with vectorised NumPy into 6 channels

    0 nuclei (DNA)   1 ER   2 actin   3 nucleoli/RNA   4 mitochondria   5 Golgi/membrane

and the confounders of a real screen are laid on top: per-well cell density, edge wells
(fewer cells, brighter stain), batch shifts of morphology, plate/batch gain and offset,
illumination gradients, vignetting, noise and focus blur. Every site is a pure function of
`(seed, index)`, so Grain workers generate sites on demand without sharing memory.

    screen = SyntheticScreen(site_size=96)
    screen[0]                 # uint8 [96, 96, 6]
    screen.metadata           # one row per site: experiment, plate, well, site, perturbation, ...
    screen.genes              # gene, group, has_phenotype, intensity_matched
    screen.relationships      # planted gene pairs, columns entity1, entity2 (both directions)
    screen.clusters           # {complex name: [genes]} (CORUM-like)
    write_screen(screen, "out/")  # images/EXP/PlateN/WELL_sS_wC.png + metadata.csv +
                                  # relationships.csv + clusters.tsv + genes.csv + spec.json

Compounds are opt-in (`compounds=`, `inactive_compounds=`): each active compound phenocopies
one or two planted genes with a dose-response over `concentrations` doses (no effect at the
lowest third, then growing linearly to the mean of its targets' effects at the top dose);
inactive compounds have an annotated target but no effect. They sit on one extra plate per
experiment after the gene plates, so every gene site keeps its index, well and random draws
and renders byte-identically with or without compounds (the default screen, and every figure
measured on it, is unchanged). `screen.compound_targets` (compound, gene) is written as
compound_targets.csv; compound wells carry a `concentration` (uM).

A second generator, drawn another way (cells as clouds of point emitters, its own phenotype
mechanisms, RxRx1's metadata columns), shares the plate layout and the writer:
maejax.data.synthetic.organelles.

Command: `python -m maejax.data.synthetic --out DIR [--generator factors|organelles]
[--site-size 256 ...] [--json]` (maejax/cli/synthetic.py).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
import sys
import time

import numpy as np
import pandas as pd
import tqdm
from scipy import ndimage, special

CHANNEL_NAMES = ("nuclei", "er", "actin", "rna", "mito", "golgi")
FACTOR_NAMES = (
    "nucleus_size", "nucleus_intensity", "cell_size", "elongation", "er_texture",
    "actin_fibres", "nucleoli", "mito_clumping", "golgi_position", "cell_count",
    "cell_scale", "texture_scale", "alignment", "nucleus_lobes", "clustering",
)
# Factors that keep every channel's pixel-intensity distribution (see the module docstring).
MORPHOLOGY_ONLY = ("elongation", "cell_scale", "texture_scale", "alignment", "nucleus_lobes")
# Factors that only act in one direction (a negative shift would look like the controls).
ONE_SIDED = ("alignment", "nucleus_lobes", "clustering")
CONTROL = "EMPTY"
# The columns of RxRx1's metadata.csv (rxrx1_metadata).
RXRX1_COLUMNS = ("site_id", "well_id", "cell_type", "dataset", "experiment", "plate", "well",
                 "site", "well_type", "sirna", "sirna_id")
_ROWS = "ABCDEFGHIJKLMNOP"
_F = {name: i for i, name in enumerate(FACTOR_NAMES)}


@dataclasses.dataclass(frozen=True)
class ScreenSpec:
  """Parameters of a synthetic screen (all sites are a pure function of these)."""

  seed: int = 0
  n_groups: int = 8            # complexes/pathways: ground-truth relationships
  genes_per_group: int = 4
  # Knock-downs without phenotype (in no group). As in real maps, planted pairs are a small
  # share of all pairs (48 of 1,770): all of them fit in the 5% most similar (88 pairs).
  n_null_genes: int = 28
  n_experiments: int = 2       # experimental batches
  plates_per_experiment: int = 2
  controls_per_plate: int = 8  # EMPTY wells on every plate
  sites_per_well: int = 2
  site_size: int = 256
  cell_radius: float = 12.0    # mean cell radius in pixels
  confluence: float = 0.3      # fraction of a site covered by cells (sets cells per site)
  effect_size: float = 2.0     # gene shift in units of cell-to-cell std of a factor
  factors_per_group: int = 3
  matched_fraction: float = 0.5    # share of complexes using MORPHOLOGY_ONLY factors only
  batch_effects: bool = True   # plate/batch acquisition and morphology shifts, edge wells
  compounds: int = 0           # active compounds (phenocopy 1-2 planted genes), opt-in
  inactive_compounds: int = 0  # compounds with an annotated target but no effect
  concentrations: int = 8      # doses per compound, one well each per compound plate

  @property
  def genes(self) -> list[str]:
    return [f"G{i:03d}" for i in range(self.n_groups * self.genes_per_group + self.n_null_genes)]

  @property
  def compound_names(self) -> list[str]:
    return [f"CPD{i:03d}" for i in range(self.compounds + self.inactive_compounds)]

  @property
  def doses(self) -> np.ndarray:
    """Concentrations in uM [concentrations], half-log spaced from 0.01."""
    return np.round(10.0 ** (-2 + 0.5 * np.arange(self.concentrations)), 4)

  @property
  def matched_groups(self) -> int:
    """How many complexes (the last ones) are intensity-matched."""
    return int(round(self.n_groups * self.matched_fraction))


def _plate_wells(n: int) -> tuple[list[str], int, int]:
  """All well names of the smallest 96/384-well plate holding n wells, rows and columns."""
  if n > 384:
    raise ValueError(f"synthetic screen: {n} wells per plate exceed a 384-well plate; "
                     "lower n_groups/genes_per_group/n_null_genes/controls_per_plate")
  rows, cols = (8, 12) if n <= 96 else (16, 24)
  return [f"{_ROWS[i // cols]}{i % cols + 1:02d}" for i in range(rows * cols)], rows, cols


def place_wells(rng: np.random.Generator, items: list, sites_per_well: int) -> list[tuple]:
  """(well, item, site, edge) of every site of one plate: `items` (one per well) in random
  order at random positions of the smallest plate that holds them; `edge`: the well is on the
  plate's border."""
  names, n_rows, n_cols = _plate_wells(len(items))
  order = rng.permutation(len(items))
  positions = np.sort(rng.choice(len(names), len(items), replace=False))
  rows = []
  for w in range(len(items)):
    r, c = divmod(int(positions[w]), n_cols)
    edge = r in (0, n_rows - 1) or c in (0, n_cols - 1)
    rows += [(names[positions[w]], items[order[w]], s + 1, edge) for s in range(sites_per_well)]
  return rows


def gene_plates(spec, experiment: str = "SYN-{}") -> list[tuple]:
  """Site rows (experiment, plate, well, site, perturbation, is_control, plate_index,
  experiment_index, edge, concentration) of the gene plates: every gene and
  `controls_per_plate` controls on each plate. `spec`: a ScreenSpec or any spec with its
  layout fields (seed, genes, controls_per_plate, n_experiments, plates_per_experiment,
  sites_per_well); `experiment`: the batch names' format, given the batch number from 1."""
  perts = spec.genes + [CONTROL] * spec.controls_per_plate
  rows = []
  for e in range(spec.n_experiments):
    for p in range(spec.plates_per_experiment):
      plate_index = e * spec.plates_per_experiment + p
      rng = np.random.default_rng([spec.seed, 4, plate_index])
      rows += [(experiment.format(e + 1), p + 1, well, site, pert, pert == CONTROL, plate_index,
                e, edge, np.nan) for well, pert, site, edge in
               place_wells(rng, perts, spec.sites_per_well)]
  return rows


def site_table(rows: list[tuple], perturbations: list[str]) -> tuple[pd.DataFrame, np.ndarray]:
  """Site rows (gene_plates) -> the metadata table (plus well_index, well_type,
  perturbation_id: the index in `perturbations`, and site_id; concentration only where some
  site has one) and whether each site's well is on the plate's edge (bool [sites])."""
  df = pd.DataFrame(rows, columns=["experiment", "plate", "well", "site", "perturbation",
                                   "is_control", "plate_index", "experiment_index", "edge",
                                   "concentration"])
  if df.concentration.isna().all():
    df = df.drop(columns="concentration")
  edge = df.pop("edge").to_numpy()
  df["well_index"] = df.groupby(["plate_index", "well"], sort=False).ngroup()
  df["well_type"] = np.where(df.is_control, "negative_control", "treatment")
  df["perturbation_id"] = pd.Categorical(df.perturbation, categories=perturbations).codes
  df["site_id"] = (df.experiment + "_" + df.plate.astype(str) + "_" + df.well + "_"
                   + df.site.astype(str))
  return df, edge


def rxrx1_metadata(metadata: pd.DataFrame, cell_type: str) -> pd.DataFrame:
  """A site table (site_table) in RxRx1's metadata.csv columns (RXRX1_COLUMNS): the
  perturbation as `sirna` and its index as `sirna_id`, controls only by `well_type`."""
  meta = metadata.rename(columns={"perturbation": "sirna", "perturbation_id": "sirna_id"})
  meta["well_id"] = meta.experiment + "_" + meta.plate.astype(str) + "_" + meta.well
  meta["cell_type"], meta["dataset"] = cell_type, "train"
  return meta[list(RXRX1_COLUMNS)]


def _layout(spec: ScreenSpec) -> tuple[pd.DataFrame, np.ndarray]:
  """One row per site, in (experiment, plate, well, site) order, wells at random plate
  positions; and whether each site's well is on the plate's edge (bool [sites])."""
  return site_table(gene_plates(spec) + _compound_layout(spec),
                    spec.genes + [CONTROL] + spec.compound_names)


def _compound_layout(spec: ScreenSpec) -> list[tuple]:
  """Site rows of the compound plates: one per experiment after its gene plates (plate
  `plates_per_experiment + 1`, plate indices after every gene plate), each compound at every
  dose and `controls_per_plate` controls at random positions."""
  if not spec.compound_names:
    return []
  wells = [(c, d) for c in spec.compound_names for d in spec.doses]
  wells += [(CONTROL, np.nan)] * spec.controls_per_plate
  rows = []
  for e in range(spec.n_experiments):
    plate_index = spec.n_experiments * spec.plates_per_experiment + e
    rng = np.random.default_rng([spec.seed, 8, e])
    rows += [(f"SYN-{e + 1}", spec.plates_per_experiment + 1, well, site, pert, pert == CONTROL,
              plate_index, e, edge, dose)
             for well, (pert, dose), site, edge in place_wells(rng, wells, spec.sites_per_well)]
  return rows


def _compounds(spec: ScreenSpec, genes: pd.DataFrame, effects: np.ndarray):
  """Each compound's targets and its effect per dose.

  Returns: (targets: DataFrame compound, gene (1-2 planted genes per active compound, one per
    inactive); effects [compounds, concentrations, n_factors]: zero for the lowest third of
    the doses, then rising linearly to the mean of the targets' effects; zero when inactive).
  """
  rng = np.random.default_rng([spec.seed, 7])
  planted = np.flatnonzero(genes.has_phenotype.to_numpy())
  k = np.arange(spec.concentrations)
  first = spec.concentrations // 3
  response = np.clip((k - first + 1) / max(spec.concentrations - first, 1), 0.0, 1.0)
  rows, out = [], np.zeros((len(spec.compound_names), spec.concentrations, effects.shape[1]),
                           np.float32)
  for i, name in enumerate(spec.compound_names):
    active = i < spec.compounds
    chosen = rng.choice(planted, size=1 + int(active and rng.random() < 0.5), replace=False)
    rows += [(name, genes.gene.iloc[g]) for g in chosen]
    if active:
      out[i] = response[:, None] * effects[chosen].mean(0)[None]
  return pd.DataFrame(rows, columns=["compound", "gene"]), out


def _group_direction(rng: np.random.Generator, spec: ScreenSpec, matched: bool) -> np.ndarray:
  """A complex's unit direction [n_factors] over `factors_per_group` factors."""
  morph = [_F[f] for f in MORPHOLOGY_ONLY]
  if matched:
    support = rng.choice(morph, size=min(spec.factors_per_group, len(morph)), replace=False)
  else:  # At least one factor per-channel statistics can see.
    visible = [i for i in range(len(FACTOR_NAMES)) if i not in morph]
    first = rng.choice(visible)
    rest = rng.choice([i for i in range(len(FACTOR_NAMES)) if i != first],
                      size=spec.factors_per_group - 1, replace=False)
    support = np.concatenate([[first], rest]).astype(np.int64)
  direction = np.zeros(len(FACTOR_NAMES))
  direction[support] = rng.choice([-1.0, 1.0], size=support.size) * rng.uniform(0.7, 1.0, support.size)
  one_sided = [_F[f] for f in ONE_SIDED]
  direction[one_sided] = np.abs(direction[one_sided])
  return direction / np.linalg.norm(direction), support


def _group_directions(spec: ScreenSpec, draws: int = 64) -> list[tuple[np.ndarray, np.ndarray]]:
  """Every complex's (direction, support), of `draws` draws the one whose two most similar
  complexes are least similar: complexes sharing most of a direction would make pairs across
  them as similar as the planted pairs within them (real complexes differ in function)."""
  first_matched = spec.n_groups - spec.matched_groups
  best, best_cos = None, np.inf
  for k in range(draws):
    rng = np.random.default_rng([spec.seed, 6, k])
    groups = [_group_direction(rng, spec, g >= first_matched) for g in range(spec.n_groups)]
    d = np.stack([direction for direction, _ in groups])
    cos = d @ d.T
    np.fill_diagonal(cos, -np.inf)
    if cos.max() < best_cos:
      best, best_cos = groups, cos.max()
  return best


def _gene_effects(spec: ScreenSpec) -> tuple[pd.DataFrame, np.ndarray]:
  """Genes table (gene, group, has_phenotype, intensity_matched) and effects [n_genes, n_factors]."""
  rng = np.random.default_rng([spec.seed, 0])
  n_factors = len(FACTOR_NAMES)
  effects, groups, matched = [], [], []
  first_matched = spec.n_groups - spec.matched_groups
  for g, (direction, support) in enumerate(_group_directions(spec)):
    for _ in range(spec.genes_per_group):
      jitter = np.zeros(n_factors)
      jitter[support] = 0.15 * rng.standard_normal(support.size)
      effects.append(spec.effect_size * rng.uniform(0.8, 1.2) * (direction + jitter))
      groups.append(f"complex_{g + 1}")
      matched.append(g >= first_matched)
  for _ in range(spec.n_null_genes):
    effects.append(np.zeros(n_factors))
    groups.append("")
    matched.append(False)
  effects = np.asarray(effects, np.float32)
  one_sided = [_F[f] for f in ONE_SIDED]
  effects[:, one_sided] = np.abs(effects[:, one_sided])
  genes = pd.DataFrame({"gene": spec.genes, "group": groups,
                        "has_phenotype": np.abs(effects).sum(1) > 0,
                        "intensity_matched": matched})
  return genes, effects


def relationships_of(genes: pd.DataFrame) -> pd.DataFrame:
  """All ordered pairs of distinct genes within one group (entity1, entity2)."""
  pairs = [(a, b) for _, grp in genes[genes.group != ""].groupby("group")
           for a in grp.gene for b in grp.gene if a != b]
  return pd.DataFrame(pairs, columns=["entity1", "entity2"])


def clusters_of(genes: pd.DataFrame) -> dict[str, list[str]]:
  """{complex: member genes}, the CORUM-like clusters of the planted groups."""
  return {name: list(grp.gene) for name, grp in genes[genes.group != ""].groupby("group", sort=False)}


def _acquisition(spec: ScreenSpec, plate_index: int, experiment_index: int) -> dict:
  """Per-plate imaging/batch parameters (gains etc.), deterministic per plate and batch."""
  c, nf = len(CHANNEL_NAMES), len(FACTOR_NAMES)
  if not spec.batch_effects:
    return dict(gain=np.ones(c, np.float32), offset=np.full(c, 0.02, np.float32), grad=0.0,
                grad_angle=0.0, vignette=0.0, noise=0.01, blur=0.0, edge_gain=0.0,
                edge_density=0.0, shift=np.zeros(nf, np.float32))
  rb = np.random.default_rng([spec.seed, 3, experiment_index])
  rp = np.random.default_rng([spec.seed, 2, plate_index])
  gain = np.exp(0.25 * rb.standard_normal(c) + 0.08 * rp.standard_normal(c))
  offset = rb.uniform(0.0, 0.06, c) + rp.uniform(0.0, 0.02, c)
  # Batches differ in morphology too (cell line passage, seeding): small shifts of every factor.
  shift = 0.3 * rb.standard_normal(nf) + 0.1 * rp.standard_normal(nf)
  shift[[_F[f] for f in ONE_SIDED]] = 0.0
  return dict(gain=gain.astype(np.float32), offset=offset.astype(np.float32),
              grad=float(rb.uniform(0.0, 0.35) + rp.uniform(0.0, 0.1)),
              grad_angle=float(rp.uniform(0, 2 * np.pi)),
              vignette=float(rb.uniform(0.0, 0.3)),
              noise=float(rb.uniform(0.01, 0.03) + rp.uniform(0.0, 0.01)),
              blur=float(rb.choice([0.0, 0.6, 1.0]) + rp.uniform(0.0, 0.3)),
              # Edge wells evaporate: fewer cells, brighter stain.
              edge_gain=float(rp.uniform(0.03, 0.12)), edge_density=float(rp.uniform(0.2, 0.6)),
              shift=shift.astype(np.float32))


def _positions(rng: np.random.Generator, n: int, size: int, radius: float,
               clustering: float) -> np.ndarray:
  """Cell centres [n, 2]: uniform, or (a `clustering` share of cells) in colonies."""
  pos = rng.uniform(0, size, (n, 2))
  share = 0.8 * np.tanh(max(clustering, 0.0))
  colony = rng.uniform(0, 1, n) < share
  if colony.any():
    seeds = rng.uniform(0, size, (max(1, n // 8), 2))
    pos[colony] = (seeds[rng.integers(0, len(seeds), colony.sum())]
                   + 1.5 * radius * rng.standard_normal((colony.sum(), 2)))
  return pos % size


def _cells(rng: np.random.Generator, spec: ScreenSpec, phenotype: np.ndarray) -> dict:
  """Draws per-cell parameters for one site from the well phenotype [n_factors]."""
  ph = phenotype
  # A whole-cell scale with proportionally fewer cells keeps the channels' pixel histograms.
  scale = np.exp(0.15 * ph[_F["cell_scale"]])
  mean_cells = spec.confluence * spec.site_size ** 2 / (np.pi * (spec.cell_radius * scale) ** 2)
  # Log-normal rather than Poisson counts: small sites stay informative about density.
  n = max(1, int(round(mean_cells * np.exp(0.35 * ph[_F["cell_count"]] + 0.1 * rng.standard_normal()))))
  f = ph[None] + 0.4 * rng.standard_normal((n, len(FACTOR_NAMES)))
  s = scale * np.exp(0.05 * rng.standard_normal(n))
  r = spec.cell_radius * s * np.exp(0.12 * f[:, _F["cell_size"]])
  elong = np.clip(0.3 + 0.15 * f[:, _F["elongation"]], 0.02, 0.9)
  base = rng.uniform(0, np.pi)
  kappa = 0.15 * np.exp(1.5 * ph[_F["alignment"]])  # von Mises concentration of orientations
  lobes = 0.3 / (1 + np.exp(-2.5 * (f[:, _F["nucleus_lobes"]] - 1.0)))
  rn = 0.45 * spec.cell_radius * s * np.exp(0.15 * f[:, _F["nucleus_size"]])
  return dict(
      n=n, center=_positions(rng, n, spec.site_size, spec.cell_radius * scale,
                             ph[_F["clustering"]]),
      angle=0.5 * rng.vonmises(2 * base, kappa, n), a=r * (1 + elong), b=r / (1 + elong),
      rn=rn, lobes=lobes, lobe_phase=rng.uniform(0, 2 * np.pi, n),
      # Texture frequencies scale with the cell: `cell_scale` stays a pure magnification.
      spot_sd=np.sqrt(1.5) * s, tex=np.exp(0.2 * f[:, _F["texture_scale"]]) / s,
      dna=0.55 * np.exp(0.2 * f[:, _F["nucleus_intensity"]]),
      er_tex=1 / (1 + np.exp(-f[:, _F["er_texture"]])), er=0.6 * np.exp(0.2 * f[:, _F["er_texture"]]),
      actin=0.6 / (1 + np.exp(-f[:, _F["actin_fibres"]])),
      mito_exp=np.exp(0.5 * f[:, _F["mito_clumping"]]),
      golgi=0.6 * np.exp(0.4 * f[:, _F["golgi_position"]]),
      golgi_size=0.45 * np.exp(0.25 * f[:, _F["golgi_position"]]),
      golgi_dir=rng.uniform(0, 2 * np.pi, n),
      # Nucleoli: up to 6, each present with a probability the `nucleoli` factor sets.
      spots=0.6 * np.sqrt(rng.uniform(0, 1, (n, 6, 1))) * _unit(rng.uniform(0, 2 * np.pi, (n, 6))),
      spot_on=rng.uniform(0, 1, (n, 6)) < np.clip(0.4 + 0.25 * f[:, _F["nucleoli"], None], 0.05, 0.95),
      phase=rng.uniform(0, 2 * np.pi, (n, 4)),
  )


def _unit(angle: np.ndarray) -> np.ndarray:
  """Angles [...] -> unit vectors [..., 2]."""
  return np.stack([np.cos(angle), np.sin(angle)], -1)


def _render(cells: dict, size: int) -> np.ndarray:
  """Renders cells into float32 [size, size, 6] (wrapping at borders: sites tile a torus)."""
  col = lambda x: np.asarray(x, np.float32)[:, None, None]  # noqa: E731  [n] -> [n, 1, 1]
  half = int(np.ceil(cells["a"].max() + 3))
  o = np.arange(-half, half + 1, dtype=np.float32)
  ci = np.floor(cells["center"]).astype(np.int64)
  frac = (cells["center"] - ci).astype(np.float32)
  y = o[None, :, None] - frac[:, 0, None, None]
  x = o[None, None, :] - frac[:, 1, None, None]
  cos, sin = col(np.cos(cells["angle"])), col(np.sin(cells["angle"]))
  u, v = x * cos + y * sin, -x * sin + y * cos  # long axis along u
  # Organelles live in shape coordinates, where the cell is a disc of radius r: elongation
  # is then an area-preserving stretch of the whole cell, which keeps every channel's
  # pixel-intensity distribution.
  stretch = np.sqrt(cells["a"] / cells["b"])
  r, rn = col(np.sqrt(cells["a"] * cells["b"])), col(cells["rn"])
  us, vs = u / col(stretch), v * col(stretch)
  dc = np.sqrt(us ** 2 + vs ** 2) / r
  nu = 0.15 * r  # nucleus sits off-centre along the long axis
  # Lobed nucleus: radius rn (1 + l cos(3 theta + phi)), rescaled to keep its area.
  un, vn = us - nu, vs / 0.85
  rho = np.sqrt(un ** 2 + vn ** 2) + 1e-6
  c, s = un / rho, vn / rho
  lp = cells["lobe_phase"]
  cos3 = (4 * c ** 3 - 3 * c) * col(np.cos(lp)) - (3 * s - 4 * s ** 3) * col(np.sin(lp))
  lobes = col(cells["lobes"])
  dn = rho * np.sqrt(1 + lobes ** 2 / 2) / (rn * (1 + lobes * cos3))
  cell = special.expit(8 * (1 - dc))
  nuc = special.expit(6 * (1 - dn))
  cyto = cell * (1 - nuc)
  ph = [col(cells["phase"][:, k]) for k in range(4)]
  tu, tv = us * col(cells["tex"]), vs * col(cells["tex"])  # texture coordinates
  ring = cell * np.exp(-(((1 - dc) / 0.12) ** 2))

  dna = nuc * col(cells["dna"]) * (1 + 0.15 * np.cos(0.9 * tu + ph[0]) * np.cos(0.9 * tv + ph[1]))
  er_tex = 0.5 + 0.5 * np.cos(0.7 * tu + ph[2]) * np.cos(0.7 * tv + ph[3])
  er = cyto * np.exp(-dc) * col(cells["er"]) * (1 - col(cells["er_tex"]) + col(cells["er_tex"]) * 2 * er_tex)
  fibres = (0.5 + 0.5 * np.cos(1.1 * tv + ph[0])) ** 4
  actin = 0.35 * ring + cell * col(cells["actin"]) * fibres
  rna = 0.12 * cyto + 0.2 * nuc
  # Nucleoli lie within the nucleus: evaluated on the patch's central window only (speed).
  w = int(np.ceil((stretch * (0.15 * np.sqrt(cells["a"] * cells["b"]) + 1.2 * cells["rn"]
                              + 3 * cells["spot_sd"])).max()))
  win = slice(max(half - w, 0), half + w + 1)
  uw, vw = us[:, win, win], vs[:, win, win]
  spot_xy = (cells["spots"] * cells["rn"][:, None, None]).astype(np.float32)  # [n, 6, 2]
  su = spot_xy[:, :, 0, None, None] + nu[:, None]
  sv = spot_xy[:, :, 1, None, None] * 0.85
  sd2 = 2 * col(cells["spot_sd"])[:, None] ** 2
  spots = np.exp(-((uw[:, None] - su) ** 2 + (vw[:, None] - sv) ** 2) / sd2)
  rna[:, win, win] += 0.5 * (spots * cells["spot_on"][:, :, None, None]).sum(1)
  mito_grain = 0.6 + 0.4 * np.cos(1.3 * tu + ph[1]) * np.cos(1.3 * tv + ph[2])
  mito = cyto * 0.7 * np.clip(1 - dc, 0, 1) ** col(cells["mito_exp"]) * mito_grain
  # A dispersed Golgi sits further from the nucleus and spreads wider (fragmentation).
  gd = col(cells["golgi"]) * rn + rn
  gu = nu + gd * col(np.cos(cells["golgi_dir"]))
  gv = gd * col(np.sin(cells["golgi_dir"]))
  golgi_sd = col(cells["golgi_size"]) * rn
  golgi = 0.15 * ring + 0.7 * cell * np.exp(-((us - gu) ** 2 + (vs - gv) ** 2) / (2 * golgi_sd ** 2))

  planes = np.stack([dna, er, actin, rna, mito, golgi])  # [6, n, p, p]
  iy = (ci[:, 0, None, None] + o.astype(np.int64)[None, :, None]) % size
  ix = (ci[:, 1, None, None] + o.astype(np.int64)[None, None, :]) % size
  flat = (iy * size + ix)[None] + (np.arange(6) * size * size)[:, None, None, None]
  out = np.bincount(flat.ravel(), weights=planes.ravel(), minlength=6 * size * size)
  return out.reshape(6, size, size).transpose(1, 2, 0).astype(np.float32)


def illumination(h: int, w: int, grad: float, angle: float, vignette: float) -> np.ndarray:
  """The microscope's illumination field [h, w]: a linear gradient along `angle` and a radial
  vignette, 1 at the centre."""
  yy, xx = np.meshgrid(np.linspace(-1, 1, h, dtype=np.float32),
                       np.linspace(-1, 1, w, dtype=np.float32), indexing="ij")
  return (1 + grad * 0.5 * (xx * np.cos(angle) + yy * np.sin(angle))
          - vignette * 0.5 * (xx ** 2 + yy ** 2))


def _acquire(img: np.ndarray, acq: dict, rng: np.random.Generator, gain: float = 1.0) -> np.ndarray:
  """Applies microscope/plate effects to float [H, W, 6] and quantises to uint8."""
  h, w, _ = img.shape
  if acq["blur"] > 0.05:
    img = ndimage.gaussian_filter(img, sigma=(acq["blur"], acq["blur"], 0), mode="wrap")
  field = illumination(h, w, acq["grad"], acq["grad_angle"], acq["vignette"])
  img = img * (gain * field)[..., None] * acq["gain"] + acq["offset"]
  img += acq["noise"] * rng.standard_normal(img.shape, dtype=np.float32) * (1 + np.sqrt(np.abs(img)))
  return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)


class SyntheticScreen:
  """Random-access source of synthetic sites: `screen[i] -> uint8 [H, W, 6]`.

  Attributes: `metadata` (one row per site), `genes` (gene, group, has_phenotype,
  intensity_matched), `relationships` (entity1, entity2), `clusters` ({complex: genes}),
  `channel_names`, `channel_ids` (int32 [6]).
  """

  def __init__(self, spec: ScreenSpec | None = None, **overrides):
    spec = dataclasses.replace(spec or ScreenSpec(), **overrides)
    self.spec = spec
    self.metadata, edge = _layout(spec)
    self.genes, self._effects = _gene_effects(spec)
    self.relationships = relationships_of(self.genes)
    self.clusters = clusters_of(self.genes)
    self.compound_targets, dose_effects = _compounds(spec, self.genes, self._effects)
    self.channel_names = CHANNEL_NAMES
    self.channel_ids = np.arange(len(CHANNEL_NAMES), dtype=np.int32)
    pert = self.metadata.perturbation_id.to_numpy()
    zero = np.zeros((1, len(FACTOR_NAMES)), np.float32)
    self._site_effect = np.concatenate([self._effects, zero])[np.minimum(pert, len(zero) +
                                                                   len(self._effects) - 1)]
    compound = pert > len(self._effects)  # [sites, factors]: genes, controls, then compounds
    if compound.any():
      dose = np.searchsorted(spec.doses, self.metadata.concentration.to_numpy()[compound])
      self._site_effect[compound] = dose_effects[pert[compound] - len(self._effects) - 1, dose]
    self._cols = np.column_stack([self.metadata[["plate_index", "experiment_index", "well_index"]]
                                  .to_numpy(), edge])
    self._acq = {}

  @classmethod
  def from_config(cls, config) -> "SyntheticScreen":
    """From a ConfigDict/dict with ScreenSpec field names (unknown keys are an error)."""
    fields = {f.name for f in dataclasses.fields(ScreenSpec)}
    given = dict(config)
    unknown = sorted(set(given) - fields)
    if unknown:
      raise ValueError(f"config.data.synthetic: unknown field(s) {unknown}; "
                       f"valid fields are {sorted(fields)}")
    return cls(ScreenSpec(**given))

  def __len__(self) -> int:
    return len(self.metadata)

  @property
  def site_shape(self) -> tuple[int, int, int]:
    return (self.spec.site_size, self.spec.site_size, len(CHANNEL_NAMES))

  def _acquisition(self, plate_index: int, experiment_index: int) -> dict:
    if plate_index not in self._acq:
      self._acq[plate_index] = _acquisition(self.spec, plate_index, experiment_index)
    return self._acq[plate_index]

  def phenotype(self, index: int) -> np.ndarray:
    """Well-level factor vector [n_factors] of site `index`: gene effect + well noise + the
    plate's morphology shift + the edge wells' lower density."""
    plate_index, experiment_index, well_index, edge = (int(v) for v in self._cols[index])
    acq = self._acquisition(plate_index, experiment_index)
    well_rng = np.random.default_rng([self.spec.seed, 5, well_index])
    noise = 0.15 * well_rng.standard_normal(len(FACTOR_NAMES)).astype(np.float32)
    noise[_F["cell_count"]] *= 2  # seeding density varies most from well to well
    ph = self._site_effect[index] + noise + acq["shift"]
    ph[_F["cell_count"]] -= edge * acq["edge_density"]
    return ph

  def __getitem__(self, index: int) -> np.ndarray:
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f"site index {index} out of range for a screen of {len(self)} sites")
    plate_index, experiment_index, _, edge = (int(v) for v in self._cols[index])
    acq = self._acquisition(plate_index, experiment_index)
    rng = np.random.default_rng([self.spec.seed, 1, index])
    cells = _cells(rng, self.spec, self.phenotype(index))
    img = _render(cells, self.spec.site_size)
    return _acquire(img, acq, rng, 1.0 + edge * acq["edge_gain"])

  def metadata_table(self) -> pd.DataFrame:
    """The rows of metadata.csv (write_screen): `metadata` without its internal indices."""
    return self.metadata.drop(columns=["plate_index", "experiment_index", "well_index"])

  def __getstate__(self):
    return {"spec": self.spec}

  def __setstate__(self, state):
    self.__init__(state["spec"])


# ---------------------------------------------------------------------------- writing to disk

def site_paths(row, fmt: str = "png") -> list[str]:
  """Relative per-channel paths of one site: EXP/PlateN/WELL_sS_wC.EXT (the RxRx1 layout)."""
  return [f"{row.experiment}/Plate{row.plate}/{row.well}_s{row.site}_w{c + 1}.{fmt}"
          for c in range(len(CHANNEL_NAMES))]


def _jax_started() -> bool:
  """fork is fast and needs no __main__ guard, but is unsafe once JAX has started its backends."""
  if "jax" not in sys.modules:
    return False
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  return xla_bridge.backends_are_initialized()


def _write_chunk(screen, image_dir: str, fmt: str, indices: list[int]) -> int:
  import tifffile  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  for i in indices:
    img = screen[i]
    for c, rel in enumerate(site_paths(screen.metadata.iloc[i], fmt)):
      path = os.path.join(image_dir, rel)
      os.makedirs(os.path.dirname(path), exist_ok=True)
      if fmt == "png":
        Image.fromarray(img[:, :, c]).save(path, compress_level=1)
      else:
        tifffile.imwrite(path, img[:, :, c])
  return len(indices)


def write_screen(screen, out_dir: str, *, fmt: str = "png", workers: int | None = None,
                 progress: bool = False) -> dict:
  """Writes images/EXP/PlateN/WELL_sS_wC.{png,tif}, metadata.csv (`screen.metadata_table()`),
  relationships.csv, clusters.tsv, genes.csv and spec.json of a SyntheticScreen or another
  generator's screen (organelles.OrganelleScreen: its metadata.csv is RxRx1's).

  The layout is the RxRx1 one, so `config.data.source="folder"` with the default template reads
  it back. clusters.tsv holds one complex a line, `name<TAB>gene gene ...` (the format and name
  the benchmark's complex heat-map looks for beside relationship files). Returns a summary dict
  (sites, seconds, paths). progress: a tqdm bar of sites.
  """
  if fmt not in ("png", "tif"):
    raise ValueError(f"write_screen: fmt must be 'png' or 'tif', got {fmt!r}")
  t0 = time.time()
  image_dir = os.path.join(out_dir, "images")
  os.makedirs(image_dir, exist_ok=True)
  workers = workers or min(os.cpu_count() or 1, 8)
  indices = list(range(len(screen)))
  chunks = [indices[k::workers * 4] for k in range(workers * 4) if indices[k::workers * 4]]
  bar = tqdm.tqdm(total=len(indices), unit="site", desc="write", dynamic_ncols=True,
                  disable=not progress)
  with bar:
    if workers == 1:
      for chunk in chunks:
        bar.update(_write_chunk(screen, image_dir, fmt, chunk))
    else:  # Workers get the screen as its spec (__getstate__) and build it again.
      ctx = multiprocessing.get_context("spawn" if _jax_started() else "fork")
      with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        for done in pool.map(_write_chunk, [screen] * len(chunks),
                             [image_dir] * len(chunks), [fmt] * len(chunks), chunks):
          bar.update(done)
  screen.metadata_table().to_csv(os.path.join(out_dir, "metadata.csv"), index=False)
  screen.relationships.to_csv(os.path.join(out_dir, "relationships.csv"), index=False)
  with open(os.path.join(out_dir, "clusters.tsv"), "w", encoding="utf-8") as f:
    f.writelines(f"{name}\t{' '.join(members)}\n" for name, members in screen.clusters.items())
  screen.genes.to_csv(os.path.join(out_dir, "genes.csv"), index=False)
  if len(getattr(screen, "compound_targets", ())):
    screen.compound_targets.to_csv(os.path.join(out_dir, "compound_targets.csv"), index=False)
  with open(os.path.join(out_dir, "spec.json"), "w") as f:
    json.dump(dataclasses.asdict(screen.spec), f, indent=1)
  return dict(sites=len(screen), seconds=round(time.time() - t0, 2), out=out_dir,
              image_dir=image_dir, metadata=os.path.join(out_dir, "metadata.csv"),
              relationships=os.path.join(out_dir, "relationships.csv"),
              clusters=os.path.join(out_dir, "clusters.tsv"))
