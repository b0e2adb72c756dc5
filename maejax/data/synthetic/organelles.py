"""A second synthetic Cell Painting screen, drawn another way: cells as clouds of emitters.

Where the default generator (maejax.data.synthetic) evaluates smooth intensity fields in each
cell's frame, this one scatters point emitters (dye molecules) and images them: filled shapes
(nuclei, cytoplasm) are uniform random points, actin fibres and mitochondrial tubules are
points along line segments, nucleoli, chromatin foci and Golgi puncta are Gaussian clouds of
points. The points are splatted onto the site and blurred by each channel's point-spread
function, so every texture carries the shot noise of its emitters. Channels as the default
screen's (`synthetic.CHANNEL_NAMES`):

    0 nuclei (DNA)   1 ER   2 actin   3 RNA/nucleoli   4 mitochondria   5 Golgi/plasma membrane

Phenotypes are named mechanisms (`PHENOTYPES`), and each complex of genes (`COMPLEXES`) has its
own program of them, the same for every seed; its genes differ in knock-down efficiency
(siRNA strength). The programs change the "amounts" of stain or cells (DNA content and nucleus
size with fewer cells, stress fibres and spreading, ER stain), or at the same amounts per cell
the "texture" (chromatin condensed into foci, more and smaller nucleoli, fragmented
mitochondria) or the "placement" of organelles (Golgi dispersal, perinuclear mitochondria,
aligned fibres, elongated nuclei). Genes outside complexes have no phenotype; `EMPTY` wells
are the negative controls. Batches (experiments) and plates differ in biology (small shifts of
size, density and stains), channel gain and offset, illumination gradient and vignetting,
focus and noise; edge wells hold fewer cells and stain brighter. Every site is a pure function
of `(seed, index)`, so Grain workers render sites on demand.

What per-channel intensity statistics (maejax.compare's baseline: mean, std, percentiles of
each site) find of this screen at its defaults (60 genes, 48 planted pairs, 2 experiments x 2
plates, 256 px sites), scored by `python -m maejax.benchmark` with TVN: recall 5/95 0.646
(10/90 0.812; no correction 0.042); seeds 1 and 2: 0.521 and 0.542. Per complex (seed 0, its six
pairs): cell_cycle_arrest 0.83, focal_adhesion 1.00, er_stress 1.00, chromatin_remodelling
0.67, ribosome_biogenesis 0.50, mitochondrial_fission 0.17, golgi_trafficking 0.67 (the
ribbon's overlapping puncta move the Golgi channel's top percentiles), cell_polarity 0.33.

    screen = OrganelleScreen(site_size=256)
    screen[0]                    # uint8 [256, 256, 6]
    screen.metadata              # one row per site: experiment, plate, well, perturbation, ...
    screen.genes                 # gene, group, program, mechanism, efficiency, has_phenotype
    synthetic.write_screen(screen, "out/")  # RxRx1's layout: images/ORG-01/Plate1/B02_s1_w1.png,
                                            # metadata.csv in RxRx1's columns, relationships.csv,
                                            # clusters.tsv, genes.csv, spec.json

`python -m maejax.data.synthetic --generator organelles --out DIR [--json]` writes it; read it
with `--config.data.source=rxrx1 --config.data.path=DIR`.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
from scipy import ndimage, special

from maejax.data import synthetic

PHENOTYPES = (
    "nucleus_size", "dna_content", "chromatin_foci", "cell_count", "cell_spread", "er_stain",
    "stress_fibres", "fibre_alignment", "nucleoli", "nucleus_elongation", "mito_fragmentation",
    "mito_perinuclear", "golgi_dispersal",
)
_P = {name: i for i, name in enumerate(PHENOTYPES)}
# Each complex's program: the phenotypes its knock-downs shift (units of PHENOTYPES, where
# cells of one well differ by 0.4), and what the program changes (genes.csv's `mechanism`):
# "amounts" of stain or cells, or at the same amounts per cell the "texture" (granularity,
# object counts and sizes) or the "placement" (position, orientation, shape) of organelles.
COMPLEXES = (
    ("cell_cycle_arrest", {"nucleus_size": 1.0, "dna_content": 0.8, "cell_count": -0.8},
     "amounts"),
    ("focal_adhesion", {"stress_fibres": 1.5, "cell_spread": 0.8}, "amounts"),
    ("er_stress", {"er_stain": 1.5, "mito_fragmentation": 0.8}, "amounts"),
    ("chromatin_remodelling", {"chromatin_foci": 0.9, "nucleoli": -1.0}, "texture"),
    ("ribosome_biogenesis", {"nucleoli": 2.0, "golgi_dispersal": 0.8}, "texture"),
    ("mitochondrial_fission", {"mito_fragmentation": 1.5, "mito_perinuclear": 1.0}, "texture"),
    ("golgi_trafficking", {"golgi_dispersal": 1.5, "mito_perinuclear": -1.0}, "placement"),
    ("cell_polarity", {"fibre_alignment": 1.5, "nucleus_elongation": 1.2}, "placement"),
)
CELL_TYPE = "ORG"  # RxRx1's cell_type column; experiments are ORG-01, ORG-02, ...
# Point-spread function (Gaussian sigma, pixels) of each channel.
_PSF = np.array([0.8, 1.2, 0.7, 0.8, 0.8, 0.8], np.float32)
_NUCLEOLUS_SD = 1.6  # Gaussian sigma of each of 3 nucleoli; k of them have sigma^2 * 3 / k.


@dataclasses.dataclass(frozen=True)
class OrganelleSpec:
  """Parameters of an organelle screen (all sites are a pure function of these)."""

  seed: int = 0
  n_groups: int = 8            # complexes, the first n_groups of COMPLEXES
  genes_per_group: int = 4
  n_null_genes: int = 28       # knock-downs without phenotype
  n_experiments: int = 2       # experimental batches (ORG-01, ...)
  plates_per_experiment: int = 2
  controls_per_plate: int = 8  # EMPTY wells on every plate
  sites_per_well: int = 2
  site_size: int = 256
  cells_per_site: float = 30.0  # mean cells on a 256 px site (scaled by site area)
  cell_radius: float = 15.0    # mean cell body radius in pixels
  nucleus_radius: float = 6.5  # mean nucleus radius in pixels
  effect_size: float = 1.0     # multiplies every complex's program
  batch_effects: bool = True   # batch/plate biology and acquisition, edge wells

  @property
  def genes(self) -> list[str]:
    return [f"K{i:03d}" for i in range(self.n_groups * self.genes_per_group + self.n_null_genes)]


def _gene_effects(spec: OrganelleSpec) -> tuple[pd.DataFrame, np.ndarray]:
  """Genes table (gene, group, program, mechanism, efficiency, has_phenotype) and effects
  [n_genes, n_phenotypes]: a complex's program times each siRNA's efficiency, with a little
  gene-to-gene jitter on the program's phenotypes."""
  if not 0 <= spec.n_groups <= len(COMPLEXES):
    raise ValueError(f"organelle screen: n_groups={spec.n_groups}; it has {len(COMPLEXES)} "
                     "complex programs (organelles.COMPLEXES), so 0 to that many")
  rng = np.random.default_rng([spec.seed, 10])
  effects, rows = [], []
  for g, (name, program, mechanism) in enumerate(COMPLEXES[:spec.n_groups]):
    direction = np.zeros(len(PHENOTYPES))
    direction[[_P[k] for k in program]] = list(program.values())
    for _ in range(spec.genes_per_group):
      efficiency = rng.uniform(0.6, 1.2)
      jitter = 0.15 * rng.standard_normal(len(PHENOTYPES)) * (direction != 0)
      effects.append(spec.effect_size * efficiency * (direction + jitter))
      rows.append((f"complex_{g + 1}", name, mechanism, round(efficiency, 3)))
  effects += [np.zeros(len(PHENOTYPES))] * spec.n_null_genes
  rows += [("", "", "", 0.0)] * spec.n_null_genes
  genes = pd.DataFrame(rows, columns=["group", "program", "mechanism", "efficiency"])
  genes.insert(0, "gene", spec.genes)
  effects = np.asarray(effects, np.float32)
  genes["has_phenotype"] = np.abs(effects).sum(1) > 0
  return genes, effects


def _acquisition(spec: OrganelleSpec, plate_index: int, experiment_index: int) -> dict:
  """Per-plate biology shift [n_phenotypes] and imaging parameters, from the batch's and the
  plate's own draws."""
  c = len(synthetic.CHANNEL_NAMES)
  if not spec.batch_effects:
    return dict(shift=np.zeros(len(PHENOTYPES), np.float32), gain=np.ones(c, np.float32),
                offset=np.full(c, 0.02, np.float32), grad=0.0, angle=0.0, vignette=0.0,
                focus=0.0, read_noise=0.008, edge_gain=0.0, edge_density=0.0)
  rb = np.random.default_rng([spec.seed, 11, experiment_index])
  rp = np.random.default_rng([spec.seed, 12, plate_index])
  # Batches differ in cell size, density and stains (passage, seeding, dye lots).
  shift = np.zeros(len(PHENOTYPES))
  varying = [_P[k] for k in ("nucleus_size", "dna_content", "cell_count", "cell_spread",
                             "er_stain")]
  shift[varying] = 0.25 * rb.standard_normal(len(varying)) + 0.08 * rp.standard_normal(len(varying))
  gain = np.exp(0.2 * rb.standard_normal(c) + 0.06 * rp.standard_normal(c))
  return dict(shift=shift.astype(np.float32), gain=gain.astype(np.float32),
              offset=(rb.uniform(0.01, 0.05, c) + rp.uniform(0, 0.01, c)).astype(np.float32),
              grad=float(rb.uniform(0.05, 0.3)),
              angle=float(rb.uniform(0, 2 * np.pi) + rp.normal(0, 0.3)),
              vignette=float(rb.uniform(0.0, 0.25)), focus=float(rp.uniform(0.0, 0.6)),
              read_noise=float(rb.uniform(0.006, 0.015)),
              edge_gain=float(rp.uniform(0.03, 0.1)), edge_density=float(rp.uniform(0.1, 0.3)))


# ------------------------------------------------------------------------------- emitters

def _rotate(xy: np.ndarray, angle: np.ndarray) -> np.ndarray:
  """Points [m, 2] (x, y) rotated by angles [m]."""
  c, s = np.cos(angle), np.sin(angle)
  return np.stack([c * xy[:, 0] - s * xy[:, 1], s * xy[:, 0] + c * xy[:, 1]], -1)


def _counts(rng: np.random.Generator, mean: np.ndarray) -> np.ndarray:
  """Poisson counts for means [n] -> the owner (index in [n]) of each point [m]."""
  return np.repeat(np.arange(len(mean)), rng.poisson(np.maximum(mean, 0)))


def _rim(cells: dict, owner: np.ndarray, theta: np.ndarray) -> np.ndarray:
  """The normalised radius of each cell's outline at elliptic angles theta [m]: an ellipse
  with a three-fold wobble."""
  return 1 + cells["wobble"][owner] * np.cos(3 * theta + cells["wobble_phase"][owner])


def _in_shape(rng: np.random.Generator, owner: np.ndarray, cells: dict, inner: float = 0.0):
  """Uniform points [m, 2] in the cell bodies of `owner` [m], in each cell's frame (x along its
  long axis), and their normalised radius in (inner, 1]."""
  theta = rng.uniform(0, 2 * np.pi, len(owner))
  rho = np.sqrt(rng.uniform(inner ** 2, 1, len(owner)))
  xy = np.stack([cells["a"][owner] * np.cos(theta), cells["b"][owner] * np.sin(theta)], -1)
  return xy * (rho * _rim(cells, owner, theta))[:, None], rho


def _in_nucleus(xy: np.ndarray, owner: np.ndarray, cells: dict) -> np.ndarray:
  """Whether cell-frame points [m, 2] lie in their cell's nucleus (bool [m])."""
  d = _rotate(xy - cells["nucleus_offset"][owner], -cells["nucleus_angle"][owner])
  return (d[:, 0] / cells["an"][owner]) ** 2 + (d[:, 1] / cells["bn"][owner]) ** 2 < 1


def _nucleus_points(rng, owner, cells, spread=np.sqrt):
  """Points [m, 2] in the nuclei of `owner` [m] (cell frame); `spread` maps uniform [0, 1)
  radii (sqrt: a uniform fill)."""
  theta = rng.uniform(0, 2 * np.pi, len(owner))
  rho = spread(rng.uniform(0, 1, len(owner)))
  xy = np.stack([cells["an"][owner] * rho * np.cos(theta),
                 cells["bn"][owner] * rho * np.sin(theta)], -1)
  return _rotate(xy, cells["nucleus_angle"][owner]) + cells["nucleus_offset"][owner]


def _clouds(rng, centres: np.ndarray, sigma: np.ndarray, mean: np.ndarray):
  """Gaussian clouds: Poisson(mean) points around each centre [k, 2] with sigma [k];
  returns (points [m, 2], the cloud of each point [m])."""
  cloud = _counts(rng, mean)
  return centres[cloud] + sigma[cloud, None] * rng.standard_normal((len(cloud), 2)), cloud


def _segments(rng, mid: np.ndarray, angle: np.ndarray, length: np.ndarray, per_px: float):
  """Points along segments (midpoints [k, 2], angles [k], lengths [k]), `per_px` per pixel
  of length on average; returns (points [m, 2], the segment of each point [m])."""
  seg = _counts(rng, per_px * length)
  t = (rng.uniform(-0.5, 0.5, len(seg)) * length[seg])[:, None]
  return mid[seg] + t * np.stack([np.cos(angle[seg]), np.sin(angle[seg])], -1), seg


def _keep_inside(xy: np.ndarray, owner: np.ndarray, cells: dict) -> np.ndarray:
  """Whether cell-frame points [m, 2] lie inside their cell body (bool [m])."""
  x, y = xy[:, 0] / cells["a"][owner], xy[:, 1] / cells["b"][owner]
  return np.hypot(x, y) < _rim(cells, owner, np.arctan2(y, x))


def _cells(rng: np.random.Generator, spec: OrganelleSpec, ph: np.ndarray, density: float) -> dict:
  """Per-cell parameters of one site from its well phenotype [n_phenotypes]: each cell's own
  phenotype varies around it by 0.4."""
  area = (spec.site_size / 256) ** 2
  n_mean = spec.cells_per_site * area * density * np.exp(0.5 * ph[_P["cell_count"]])
  centre = _centres(rng, max(1, rng.poisson(n_mean)), spec.site_size, 2.4 * spec.nucleus_radius)
  n = len(centre)
  f = ph[None] + 0.4 * rng.standard_normal((n, len(PHENOTYPES)))
  r = spec.cell_radius * np.exp(0.2 * f[:, _P["cell_spread"]])
  aspect = np.exp(np.abs(0.3 + 0.15 * rng.standard_normal(n)))
  rn = spec.nucleus_radius * np.exp(0.18 * f[:, _P["nucleus_size"]])
  rn = np.minimum(rn, 0.7 * r)
  n_aspect = np.exp(np.clip(0.2 + 0.25 * f[:, _P["nucleus_elongation"]], 0.0, 1.2))
  return dict(
      n=n, centre=centre, angle=rng.uniform(0, np.pi, n), a=r * np.sqrt(aspect),
      b=r / np.sqrt(aspect), wobble=rng.uniform(0.03, 0.12, n),
      wobble_phase=rng.uniform(0, 2 * np.pi, n),
      nucleus_offset=(0.12 * r)[:, None] * rng.standard_normal((n, 2)),
      nucleus_angle=rng.normal(0, 0.2, n), an=rn * np.sqrt(n_aspect), bn=rn / np.sqrt(n_aspect),
      f=f,
  )


def _centres(rng: np.random.Generator, n: int, size: int, spacing: float) -> np.ndarray:
  """Up to n cell centres [n, 2] at least `spacing` apart on the site's torus (nuclei do not
  overlap; a crowded site keeps fewer cells, as a confluent well does)."""
  keep = np.empty((0, 2))
  for p in rng.uniform(0, size, (4 * n, 2)):
    d = np.abs(keep - p)
    d = np.minimum(d, size - d)
    if (d ** 2).sum(1).min(initial=np.inf) >= spacing ** 2:
      keep = np.vstack([keep, p])
      if len(keep) == n:
        break
  return keep


def _ph(cells: dict, name: str) -> np.ndarray:
  """One phenotype of every cell [n]."""
  return cells["f"][:, _P[name]]


def _join(*parts) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Parts (owner [m_i], cell-frame points [m_i, 2], weight scalar or [m_i]) of one channel
  -> (owner [m], points [m, 2], weights [m])."""
  return (np.concatenate([o for o, _, _ in parts]), np.concatenate([xy for _, xy, _ in parts]),
          np.concatenate([np.broadcast_to(np.asarray(w, np.float32), len(o)) for o, _, w in parts]))


def _membrane(rng: np.random.Generator, cells: dict, inner: float, weight: float) -> tuple:
  """Emitters under the plasma membrane: the rim of each cell body beyond radius `inner`."""
  owner = _counts(rng, 0.3 * np.pi * cells["a"] * cells["b"])
  xy, _ = _in_shape(rng, owner, cells, inner=inner)
  return owner, xy, weight


def _dna(rng: np.random.Generator, cells: dict) -> tuple:
  """Nuclei: a uniform fill, and chromatin foci that hold a share of the same total DNA."""
  area = np.pi * cells["an"] * cells["bn"]
  foci = special.expit(_ph(cells, "chromatin_foci") - 1.5)
  weight = 0.15 * np.exp(0.25 * _ph(cells, "dna_content"))  # 3 emitters a pixel: 0.45
  owner = _counts(rng, 3.0 * area * (1 - foci))
  fill = _nucleus_points(rng, owner, cells)
  n_foci = 6
  focus = np.repeat(np.arange(cells["n"]), n_foci)
  centres = _nucleus_points(rng, focus, cells, lambda u: 0.8 * np.sqrt(u))
  spots, cloud = _clouds(rng, centres, np.full(len(focus), 0.9),
                         (3.0 * area * foci / n_foci)[focus])
  return _join((owner, fill, weight[owner]), (focus[cloud], spots, weight[focus[cloud]]))


def _er(rng: np.random.Generator, cells: dict) -> tuple:
  """ER: the cytoplasm, densest around the nucleus."""
  owner = _counts(rng, 2.5 * np.pi * cells["a"] * cells["b"])
  xy, rho = _in_shape(rng, owner, cells)
  keep = ~_in_nucleus(xy, owner, cells)
  weight = 0.11 * np.exp(0.3 * _ph(cells, "er_stain"))[owner] * (1.3 - rho)
  return owner[keep], xy[keep], weight[keep]


def _actin(rng: np.random.Generator, cells: dict) -> tuple:
  """Actin: the cortex and stress fibres (chords of the cell), random or along its long axis."""
  fibres = rng.poisson(3.0 * np.exp(0.6 * _ph(cells, "stress_fibres")))
  fibre = np.repeat(np.arange(cells["n"]), fibres)
  angle = rng.vonmises(0, 0.3 * np.exp(1.5 * _ph(cells, "fibre_alignment"))[fibre])
  offset = rng.uniform(-0.7, 0.7, len(fibre)) * cells["b"][fibre]
  mid = np.stack([-np.sin(angle) * offset, np.cos(angle) * offset], -1)
  line, seg = _segments(rng, mid, angle, 2.2 * cells["a"][fibre], 3.0)
  keep = _keep_inside(line, fibre[seg], cells)
  return _join(_membrane(rng, cells, 0.88, 0.12), (fibre[seg][keep], line[keep], 0.09))


def _rna(rng: np.random.Generator, cells: dict) -> tuple:
  """RNA: cytoplasm and nucleoplasm, and nucleoli; more nucleoli come smaller, at the same
  total area and peak brightness (which the PSF blurs down for the smallest)."""
  owner = _counts(rng, 1.5 * np.pi * cells["a"] * cells["b"])
  xy, _ = _in_shape(rng, owner, cells)
  weight = np.where(_in_nucleus(xy, owner, cells), 0.1, 0.06)
  k = 1 + np.minimum(rng.poisson(2.0 * np.exp(0.6 * _ph(cells, "nucleoli"))), 11)
  nucleolus = np.repeat(np.arange(cells["n"]), k)
  centres = _nucleus_points(rng, nucleolus, cells, lambda u: 0.65 * np.sqrt(u))
  sigma = (_NUCLEOLUS_SD * (3 / k) ** 0.5)[nucleolus]
  spots, cloud = _clouds(rng, centres, sigma, 6.0 * sigma ** 2)
  return _join((owner, xy, weight), (nucleolus[cloud], spots, 0.6))


def _mito(rng: np.random.Generator, cells: dict) -> tuple:
  """Mitochondria: tubules of a fixed total length per cell; fission cuts them shorter,
  perinuclear ones gather at the nucleus."""
  length = 7.0 * np.exp(-0.5 * _ph(cells, "mito_fragmentation"))
  count = np.round(3.5 * np.sqrt(np.pi * cells["a"] * cells["b"]) / length)
  tubule = np.repeat(np.arange(cells["n"]), np.maximum(1, count).astype(np.int64))
  theta = rng.uniform(0, 2 * np.pi, len(tubule))
  inner = (1.2 * np.sqrt(cells["an"] * cells["bn"] / (cells["a"] * cells["b"])))[tubule]
  rho = inner + (0.75 - inner) * rng.uniform(0, 1, len(tubule)) ** np.exp(
      0.8 * _ph(cells, "mito_perinuclear"))[tubule]
  mid = rho[:, None] * np.stack([cells["a"][tubule] * np.cos(theta),
                                 cells["b"][tubule] * np.sin(theta)], -1)
  line, seg = _segments(rng, mid, rng.uniform(0, np.pi, len(tubule)), length[tubule], 3.0)
  return tubule[seg], line, 0.2


def _golgi(rng: np.random.Generator, cells: dict) -> tuple:
  """Golgi puncta, in a ribbon on one side of the nucleus or (dispersed) anywhere in the
  cytoplasm, and the plasma membrane (the same stain, WGA)."""
  n_puncta = 8
  punctum = np.repeat(np.arange(cells["n"]), n_puncta)
  dispersed = special.expit(2 * _ph(cells, "golgi_dispersal") - 1.5)[punctum]
  scattered = rng.uniform(0, 1, len(punctum)) < dispersed
  side = rng.uniform(0, 2 * np.pi, cells["n"])[punctum] + rng.normal(0, 0.8, len(punctum))
  reach = np.sqrt(cells["an"] * cells["bn"])[punctum] + rng.uniform(1.5, 5.0, len(punctum))
  ribbon = cells["nucleus_offset"][punctum] + reach[:, None] * np.stack([np.cos(side),
                                                                         np.sin(side)], -1)
  anywhere, _ = _in_shape(rng, punctum, cells, inner=0.4)
  centres = np.where(scattered[:, None], anywhere, ribbon)
  spots, cloud = _clouds(rng, centres, np.full(len(punctum), 0.9), np.full(len(punctum), 25.0))
  return _join(_membrane(rng, cells, 0.9, 0.1), (punctum[cloud], spots, 0.12))


def _emitters(rng: np.random.Generator, cells: dict) -> list[tuple[np.ndarray, np.ndarray]]:
  """Every channel's emitters in site pixels: [(points [m, 2] (x, y), weights [m])] * 6."""
  out = []
  for channel in (_dna, _er, _actin, _rna, _mito, _golgi):
    owner, xy, weight = channel(rng, cells)
    out.append((_rotate(xy, cells["angle"][owner]) + cells["centre"][owner], weight))
  return out


def _render(emitters: list, size: int, psf: np.ndarray) -> np.ndarray:
  """Splats each channel's emitters (bilinear, wrapping at borders) and blurs it by its PSF
  sigma [6]: float32 [size, size, 6]."""
  planes = []
  for (xy, w), sigma in zip(emitters, psf):
    x0, y0 = np.floor(xy[:, 0]), np.floor(xy[:, 1])
    fx, fy = xy[:, 0] - x0, xy[:, 1] - y0
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    idx, wts = [], []
    for dy, dx, k in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)),
                      (1, 1, fy * fx)):
      idx.append(((y0 + dy) % size) * size + (x0 + dx) % size)
      wts.append(w * k)
    plane = np.bincount(np.concatenate(idx), np.concatenate(wts), size * size)
    planes.append(ndimage.gaussian_filter(plane.reshape(size, size), sigma, mode="wrap"))
  return np.stack(planes, -1).astype(np.float32)


def _acquire(img: np.ndarray, acq: dict, rng: np.random.Generator, gain: float) -> np.ndarray:
  """Illumination, channel gain and offset, shot and read noise on float [H, W, 6] -> uint8."""
  field = synthetic.illumination(*img.shape[:2], acq["grad"], acq["angle"], acq["vignette"])
  img = img * (gain * field)[..., None] * acq["gain"]
  noise = np.sqrt(acq["read_noise"] ** 2 + 0.003 * img)  # photon shot noise grows with signal
  img = img + acq["offset"] + noise * rng.standard_normal(img.shape, dtype=np.float32)
  return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)


class OrganelleScreen:
  """Random-access source of organelle-screen sites: `screen[i] -> uint8 [H, W, 6]`.

  Attributes as SyntheticScreen's: `metadata` (one row per site), `genes` (gene, group,
  program, mechanism, efficiency, has_phenotype), `relationships` (entity1, entity2),
  `clusters` ({complex: genes}), `channel_names`, `channel_ids` (int32 [6]).
  """

  def __init__(self, spec: OrganelleSpec | None = None, **overrides):
    spec = dataclasses.replace(spec or OrganelleSpec(), **overrides)
    self.spec = spec
    self.genes, self._effects = _gene_effects(spec)
    self.metadata, edge = synthetic.site_table(synthetic.gene_plates(spec, f"{CELL_TYPE}-{{:02d}}"),
                                               spec.genes + [synthetic.CONTROL])
    self.relationships = synthetic.relationships_of(self.genes)
    self.clusters = synthetic.clusters_of(self.genes)
    self.channel_names = synthetic.CHANNEL_NAMES
    self.channel_ids = np.arange(len(synthetic.CHANNEL_NAMES), dtype=np.int32)
    control = np.zeros((1, len(PHENOTYPES)), np.float32)
    self._site_effect = np.concatenate([self._effects, control])[self.metadata.perturbation_id]
    self._cols = np.column_stack([self.metadata[["plate_index", "well_index"]].to_numpy(), edge])
    plates = self.metadata.groupby("plate_index").experiment_index.first()
    self._acq = [_acquisition(spec, p, e) for p, e in plates.items()]

  def __len__(self) -> int:
    return len(self.metadata)

  @property
  def site_shape(self) -> tuple[int, int, int]:
    return (self.spec.site_size, self.spec.site_size, len(synthetic.CHANNEL_NAMES))

  def phenotype(self, index: int) -> np.ndarray:
    """Well-level phenotype [n_phenotypes] of site `index`: the gene's effect, well-to-well
    noise and the plate's biology shift."""
    plate_index, well_index, _ = (int(v) for v in self._cols[index])
    well_rng = np.random.default_rng([self.spec.seed, 13, well_index])
    noise = 0.15 * well_rng.standard_normal(len(PHENOTYPES))
    noise[_P["cell_count"]] *= 2  # seeding density varies most from well to well
    return (self._site_effect[index] + noise + self._acq[plate_index]["shift"]).astype(np.float32)

  def __getitem__(self, index: int) -> np.ndarray:
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f"site index {index} out of range for a screen of {len(self)} sites")
    plate_index, _, edge = (int(v) for v in self._cols[index])
    acq = self._acq[plate_index]
    rng = np.random.default_rng([self.spec.seed, 14, index])
    cells = _cells(rng, self.spec, self.phenotype(index), 1 - edge * acq["edge_density"])
    psf = np.sqrt(_PSF ** 2 + acq["focus"] ** 2)
    img = _render(_emitters(rng, cells), self.spec.site_size, psf)
    return _acquire(img, acq, rng, 1 + edge * acq["edge_gain"])

  def metadata_table(self) -> pd.DataFrame:
    """The rows of metadata.csv (synthetic.write_screen): RxRx1's columns."""
    return synthetic.rxrx1_metadata(self.metadata, CELL_TYPE)

  def __getstate__(self):
    return {"spec": self.spec}

  def __setstate__(self, state):
    self.__init__(state["spec"])
