"""Grain training pipeline and evaluation tiles, against NumPy references."""

import itertools

import numpy as np
import pandas as pd
import pytest

import maejax.data as md
from maejax.data import pipeline


class IdSource(md.Source):
  """Site i: random uint8 pixels whose first channel's corner pixel encodes i (via a lookup)."""

  def __init__(self, n=24, size=20, channels=4):
    rng = np.random.default_rng(0)
    self.images = rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8)
    self.metadata = pd.DataFrame({"experiment": "E", "plate": 1, "well": [f"A{i:02d}" for i in range(n)],
                                  "site": 1, "perturbation": [f"g{i % 3}" for i in range(n)],
                                  "is_control": False})
    self.channel_ids = np.array([10, 11, 12, 13][:channels], np.int32)
    self.channel_names = tuple("abcd"[:channels])
    self.site_shape = (size, size, channels)

  def _read(self, index):
    return self.images[index]


def _config(**kw):
  c = md.default_config()
  c.crop_size = 8
  c.update(kw)
  return c


def _d4(crop):
  """All 8 flips/rotations of [h, w, c] (NumPy reference)."""
  return [np.rot90(f, k, axes=(0, 1)) for f in (crop, crop[:, ::-1]) for k in range(4)]


def _find(site, out):
  """(y, x, channel slots) such that `out` is a D4 transform of site[y:y+s, x:x+s, slots]."""
  s = out.shape[0]
  h, w, c = site.shape
  for y, x in itertools.product(range(h - s + 1), range(w - s + 1)):
    for slots in itertools.combinations(range(c), out.shape[-1]):
      crop = site[y:y + s, x:x + s][..., list(slots)]
      if any(np.array_equal(t, out) for t in _d4(crop)):
        return y, x, slots
  return None


def test_apply_augment_matches_numpy():
  img = np.random.default_rng(1).integers(0, 256, (12, 10, 3), dtype=np.uint8)
  params = dict(y=2, x=3, flip=True, k=3)
  ref = np.rot90(np.fliplr(img[2:7, 3:8]), 3)
  np.testing.assert_array_equal(pipeline.apply_augment(img, params, 5), ref)


def test_train_batches_are_crops_flips_rotations_of_the_sites():
  src = IdSource(n=6)
  c = _config(sample_channels=2, shuffle=False)
  it = md.train_iterator(c, batch_size=6, seed=3, shard_index=0, shard_count=1, source=src)
  seen_k = set()
  batch = next(it)
  assert batch["image"].dtype == np.uint8 and batch["image"].shape == (6, 8, 8, 2)
  assert batch["channel_ids"].dtype == np.int32 and batch["channel_ids"].shape == (6, 2)
  for i in range(6):  # shuffle off: example i comes from site i
    found = _find(src.images[i], batch["image"][i])
    assert found is not None, f"example {i} is no crop/flip/rotation of site {i}"
    np.testing.assert_array_equal(batch["channel_ids"][i], src.channel_ids[list(found[2])])
    seen_k.add(found[:2])
  assert len(seen_k) > 1  # offsets vary
  # One channel set per batch (the channel-agnostic decoder picks stacks per batch) ...
  assert (batch["channel_ids"] == batch["channel_ids"][0]).all()
  # ... drawn anew for each batch.
  sets = {tuple(next(it)["channel_ids"][0]) for _ in range(12)}
  assert len(sets) > 1


def test_no_augmentation_is_a_plain_crop_with_all_channels():
  src = IdSource(n=4)
  c = _config(flips=False, rotations=False, shuffle=False)
  batch = next(md.train_iterator(c, batch_size=4, shard_index=0, shard_count=1, source=src))
  for i in range(4):
    out = batch["image"][i]
    hits = [(y, x) for y in range(13) for x in range(13)
            if np.array_equal(src.images[i][y:y + 8, x:x + 8], out)]
    assert hits
  np.testing.assert_array_equal(batch["channel_ids"], np.tile(src.channel_ids, (4, 1)))


def test_sharding_across_emulated_hosts_is_disjoint_and_complete():
  src = IdSource(n=24)
  c = _config(num_epochs=1, flips=False, rotations=False)
  c.crop_size = 20  # whole site: identity is the image itself
  per_host = []
  for host in range(3):
    it = md.train_iterator(c, batch_size=12, seed=7, shard_index=host, shard_count=3, source=src)
    ids = []
    for batch in it:
      assert batch["image"].shape[0] == 4  # global 12 over 3 hosts
      ids += [next(j for j in range(24) if np.array_equal(src.images[j], im)) for im in batch["image"]]
    per_host.append(ids)
  flat = sum(per_host, [])
  assert sorted(flat) == list(range(24))
  assert per_host[0] != sorted(per_host[0])  # shuffled within the shard


def test_iterator_state_restores_identical_next_batches():
  c = _config(sample_channels=2, label_column="perturbation")
  src = IdSource(n=10)
  it = md.train_iterator(c, batch_size=4, seed=5, shard_index=0, shard_count=1, source=src)
  for _ in range(3):  # into the second epoch
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(3)]
  fresh = md.train_iterator(c, batch_size=4, seed=5, shard_index=0, shard_count=1, source=src)
  fresh.set_state(state)
  for want in expected:
    got = next(fresh)
    assert set(got) == {"image", "channel_ids", "label"}
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])
  other = md.train_iterator(c, batch_size=4, seed=6, shard_index=0, shard_count=1, source=src)
  assert not np.array_equal(next(other)["image"], next(md.train_iterator(
      c, batch_size=4, seed=5, shard_index=0, shard_count=1, source=src))["image"])


def test_labels_follow_metadata_column():
  src = IdSource(n=6)
  c = _config(label_column="perturbation", shuffle=False, crop_size=20, flips=False, rotations=False)
  batch = next(md.train_iterator(c, batch_size=6, shard_index=0, shard_count=1, source=src))
  np.testing.assert_array_equal(batch["label"], [0, 1, 2, 0, 1, 2])
  assert md.num_classes(src, "perturbation") == 3


def test_worker_processes_give_the_same_batches_and_restore():
  src_cfg = _config()
  src_cfg.synthetic.update(site_size=32, cell_radius=6.0, n_groups=2, genes_per_group=2,
                           n_null_genes=0, n_experiments=1, plates_per_experiment=1,
                           controls_per_plate=2, sites_per_well=1)
  src_cfg.crop_size = 16
  serial = md.train_iterator(src_cfg, batch_size=2, seed=1, shard_index=0, shard_count=1)
  want = [next(serial) for _ in range(4)]
  src_cfg.worker_count = 1
  it = md.train_iterator(src_cfg, batch_size=2, seed=1, shard_index=0, shard_count=1)
  got = [next(it) for _ in range(2)]
  state = it.get_state()
  for g, w in zip(got, want[:2]):
    np.testing.assert_array_equal(g["image"], w["image"])
  restored = md.train_iterator(src_cfg, batch_size=2, seed=1, shard_index=0, shard_count=1)
  restored.set_state(state)
  np.testing.assert_array_equal(next(restored)["image"], want[2]["image"])
  for x in (it, restored):
    x.close()


def test_config_errors_are_clear():
  src = IdSource(n=6)
  with pytest.raises(ValueError, match="crop_size=32 exceeds"):
    md.train_iterator(_config(crop_size=32), batch_size=2, shard_index=0, shard_count=1, source=src)
  with pytest.raises(ValueError, match="not divisible by shard_count=4"):
    md.train_iterator(_config(), batch_size=6, shard_index=0, shard_count=4, source=src)
  with pytest.raises(ValueError, match="sample_channels=9"):
    md.train_iterator(_config(sample_channels=9), batch_size=2, shard_index=0, shard_count=1, source=src)
  with pytest.raises(ValueError, match="label_column='gene'"):
    md.train_iterator(_config(label_column="gene"), batch_size=2, shard_index=0, shard_count=1, source=src)


def test_eval_tiles_fixed_order_with_metadata():
  src = IdSource(n=5, size=20)
  batches = list(md.eval_tiles(src, crop_size=8, batch_size=7))
  images = np.concatenate([b["image"] for b, _ in batches])
  rows = pd.concat([r for _, r in batches], ignore_index=True)
  assert [len(r) for _, r in batches] == [7, 7, 6]  # 5 sites x 2x2 tiles; last batch partial
  ref = [src.images[i][y:y + 8, x:x + 8] for i in range(5) for y in (0, 8) for x in (0, 8)]
  np.testing.assert_array_equal(images, np.stack(ref))
  assert rows.site_index.tolist() == [i for i in range(5) for _ in range(4)]
  assert rows[["tile_y", "tile_x"]].to_numpy()[:4].tolist() == [[0, 0], [0, 8], [8, 0], [8, 8]]
  assert rows.well.tolist()[4:8] == ["A01"] * 4
  np.testing.assert_array_equal(batches[0][0]["channel_ids"], np.tile(src.channel_ids, (7, 1)))
  assert list(md.eval_tiles(src, None, 100))[0][0]["image"].shape == (5, 20, 20, 4)
