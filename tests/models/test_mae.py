"""ViT-MAE / CA-MAE: shapes, masking, losses and tokenizers against NumPy references."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from maejax import models
from maejax.models import losses, mae, tokenizers


def images(b, h, c, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (b, h, h, c), dtype=np.uint8)


def np_sincos(grid, dim):
  """MAE's get_2d_sincos_pos_embed, written independently."""
  def one(pos, d):
    omega = 1.0 / 10000 ** (np.arange(d // 2) / (d / 2))
    o = np.einsum("m,d->md", pos.reshape(-1), omega)
    return np.concatenate([np.sin(o), np.cos(o)], 1)
  gh, gw = np.meshgrid(np.arange(grid, dtype=float), np.arange(grid, dtype=float), indexing="ij")
  return np.concatenate([one(gw, dim // 2), one(gh, dim // 2)], 1)


def np_sincos_row_first(grid, dim):
  """OpenPhenom's table from ../shared/reference/openphenom.md: patch (h, w) in row-major
  order -> [sin(h w_i) | cos(h w_i) | sin(w w_i) | cos(w w_i)], w_i = 1/10000^(i/(dim/4))."""
  w_i = 1.0 / 10000 ** (np.arange(dim // 4) / (dim / 4))
  h, w = np.divmod(np.arange(grid * grid), grid)
  return np.concatenate([np.sin(np.outer(h, w_i)), np.cos(np.outer(h, w_i)),
                         np.sin(np.outer(w, w_i)), np.cos(np.outer(w, w_i))], 1)


def test_sincos_matches_reference():
  np.testing.assert_allclose(tokenizers.sincos_2d(4, 4, 16, "column_first"), np_sincos(4, 16),
                             atol=1e-6)
  np.testing.assert_allclose(tokenizers.sincos_2d(5, 5, 24, "row_first"),
                             np_sincos_row_first(5, 24), atol=1e-6)


def test_row_first_sincos_is_openphenoms_table():
  golden = (Path(__file__).resolve().parents[2] / ".." / "shared" / "reference"
            / "openphenom_pos_tables.npz")
  if not golden.is_file():
    pytest.skip(f"OpenPhenom's golden position tables not found at {golden} "
                "(../shared/reference beside the repository)")
  with np.load(golden) as z:
    enc, dec = z["encoder_pos_embed"][0], z["decoder_pos_embeddings"][0]
  np.testing.assert_allclose(tokenizers.sincos_2d(16, 16, 384, "row_first"), enc[1:257], atol=1e-5)
  np.testing.assert_allclose(tokenizers.sincos_2d(16, 16, 512, "row_first"), dec[1:257], atol=1e-5)


@pytest.mark.parametrize("name", ["vit_tiny", "camae_tiny"])
def test_pos_layout_reaches_the_tokenizer_and_the_decoder(name):
  x = jnp.asarray(images(2, 32, 3 if name == "camae_tiny" else 6))
  col = models.create(name, rngs=nnx.Rngs(0))
  row = models.create(name, rngs=nnx.Rngs(0), pos_layout="row_first")
  # Same weights: the tokens differ by exactly the difference of the two tables.
  tokenize = nnx.jit(lambda m: m.encoder.tokenize(x))
  diff = np.asarray(tokenize(row) - tokenize(col))[0]
  table_diff = np_sincos_row_first(4, 64) - np_sincos(4, 64)
  np.testing.assert_allclose(diff, np.tile(table_diff, (diff.shape[0] // 16, 1)), atol=1e-5)
  latent = jax.random.normal(jax.random.key(0), (2, 1 + diff.shape[0], 64))
  ids_restore = jnp.tile(jnp.arange(diff.shape[0]), (2, 1))
  decode = nnx.jit(lambda m: m.decoder(latent, ids_restore, (4, 4), jnp.arange(x.shape[-1])))
  assert not np.allclose(decode(row), decode(col), atol=1e-3)
  with pytest.raises(ValueError, match=r"model\.pos_layout='rows': one of column_first, row_first"):
    models.create(name, pos_layout="rows")


def test_patchify_matches_reference_and_inverts():
  x = np.random.default_rng(0).normal(size=(2, 8, 12, 3)).astype(np.float32)
  p = tokenizers.patchify(jnp.asarray(x), 4)
  # Token (row 1, col 2), pixel (dy=3, dx=1), channel 2.
  assert p.shape == (2, 6, 48)
  assert p[1, 1 * 3 + 2, (3 * 4 + 1) * 3 + 2] == x[1, 4 + 3, 8 + 1, 2]
  np.testing.assert_array_equal(tokenizers.unpatchify(p, 4, 8, 12), x)
  pc = tokenizers.patchify_channels(jnp.asarray(x), 4)
  assert pc.shape == (2, 3 * 6, 16)
  assert pc[0, 2 * 6 + 4, 2 * 4 + 3] == x[0, 4 + 2, 4 + 3, 2]  # channel 2, token 4
  np.testing.assert_array_equal(tokenizers.unpatchify_channels(pc, 4, 8, 12, 3), x)


def test_standardize_matches_numpy():
  x = images(2, 16, 3)
  f = x.astype(np.float64) / 255
  ref = (f - f.mean((1, 2), keepdims=True)) / np.sqrt(f.var((1, 2), keepdims=True) + 1e-5)
  np.testing.assert_allclose(tokenizers.standardize(jnp.asarray(x)), ref, atol=1e-5)


@pytest.mark.parametrize("ratio", [0.75, 0.5, 0.9])
def test_random_masking_exact_count_and_restore(ratio):
  b, l, d = 3, 40, 5
  tokens = jnp.arange(b * l * d, dtype=jnp.float32).reshape(b, l, d)
  kept, mask, ids_restore = mae.random_masking(tokens, ratio, key=jax.random.key(0))
  keep = int(l * (1 - ratio))
  assert kept.shape == (b, keep, d)
  np.testing.assert_array_equal(mask.sum(1), l - keep)
  for i in range(b):
    assert sorted(np.asarray(ids_restore[i]).tolist()) == list(range(l))
    # Kept tokens are exactly the unmasked ones.
    visible = np.flatnonzero(np.asarray(mask[i]) == 0)
    assert sorted((np.asarray(kept[i, :, 0]) // d - i * l).astype(int).tolist()) == visible.tolist()
  # Restoring kept tokens + mask tokens puts every kept token back at its own position.
  restored = mae.unshuffle(kept, jnp.full((1, 1, d), -1.0), ids_restore)
  m = np.asarray(mask, bool)
  np.testing.assert_array_equal(np.asarray(restored)[~m], np.asarray(tokens)[~m])
  assert (np.asarray(restored)[m] == -1).all()


def test_permute_rows_gradient_is_the_gather_gradient():
  """The custom VJP (inverse permutation) equals autodiff's scatter-add, masking included."""
  b, l, d = 3, 12, 4
  x = jax.random.normal(jax.random.key(0), (b, l, d))
  w = jax.random.normal(jax.random.key(1), (b, 5, d))
  perm = jax.vmap(lambda k: jax.random.permutation(k, l))(jax.random.split(jax.random.key(2), b))
  ref = lambda x: (jnp.take_along_axis(x, perm[:, :5, None], axis=1) * w).sum()
  got = lambda x: (mae.permute_rows(x, perm)[:, :5] * w).sum()
  np.testing.assert_array_equal(jax.grad(got)(x), jax.grad(ref)(x))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
# 1 pair in blocks of 1 query, 1 pair in blocks of 3, 3 and 1 queries, 4 pairs, all 6.
@pytest.mark.parametrize("chunk_bytes", [1, 4 * 3 * 9, 4 * 7 * 9 * 4, 2**22])
def test_chunked_attention_matches_numpy_and_dot_product_attention(dtype, chunk_bytes,
                                                                   monkeypatch):
  """The CPU attention path (layers.chunked_attention, its own backward pass) against a
  float64 NumPy softmax attention, and against jax.nn.dot_product_attention (the GPU
  path), values and grads, for groups of one, some and all (example, head) pairs, and for
  queries in blocks (long sequences)."""
  from maejax.models import layers
  monkeypatch.setattr(layers, "CHUNK_BYTES", chunk_bytes)
  b, lq, lk, h, d = 2, 7, 9, 3, 8
  q, k, v = (jax.random.normal(jax.random.key(i), (b, l, h, d)) for i, l in
             enumerate((lq, lk, lk)))
  s = np.einsum("bqhd,bkhd->bhqk", np.float64(q), np.float64(k)) / np.sqrt(d)
  p = np.exp(s - s.max(-1, keepdims=True))
  ref = np.einsum("bhqk,bkhd->bqhd", p / p.sum(-1, keepdims=True), np.float64(v))
  cast = lambda *t: [x.astype(dtype) for x in t]
  got = layers.chunked_attention(*cast(q, k, v))
  tol = 1e-5 if dtype == jnp.float32 else 3e-2
  np.testing.assert_allclose(np.float64(got.astype(jnp.float32)), ref, atol=tol, rtol=tol)
  w = jax.random.normal(jax.random.key(5), (b, lq, h, d))
  loss = lambda f: lambda *a: (f(*cast(*a)).astype(jnp.float32) * w).sum()
  g1 = jax.grad(loss(layers.chunked_attention), (0, 1, 2))(q, k, v)
  g2 = jax.grad(loss(jax.nn.dot_product_attention), (0, 1, 2))(q, k, v)
  for a, c in zip(g1, g2):
    np.testing.assert_allclose(np.float32(a), np.float32(c), atol=10 * tol, rtol=10 * tol)


def test_masking_differs_per_key_and_repeats_per_key():
  t = jnp.zeros((2, 16, 4))
  _, m1, _ = mae.random_masking(t, 0.75, key=jax.random.key(1))
  _, m2, _ = mae.random_masking(t, 0.75, key=jax.random.key(1))
  _, m3, _ = mae.random_masking(t, 0.75, key=jax.random.key(2))
  np.testing.assert_array_equal(m1, m2)
  assert not np.array_equal(m1, m3)


def np_loss(pred, target, mask, p, w, norm_pix):
  pred, target = pred.astype(np.float64), target.astype(np.float64)
  if norm_pix:
    target = (target - target.mean(-1, keepdims=True)) / np.sqrt(target.var(-1, keepdims=True) + 1e-6)
  mse = ((pred - target) ** 2).mean(-1)
  b, l, _ = pred.shape
  fp = np.abs(np.fft.fft2(pred.reshape(b, l, p, p, -1), axes=(2, 3)))
  ft = np.abs(np.fft.fft2(target.reshape(b, l, p, p, -1), axes=(2, 3)))
  four = np.abs(fp - ft).mean((2, 3, 4))
  mse = (mse * mask).sum() / mask.sum()
  four = (four * mask).sum() / mask.sum()
  return (1 - w) * mse + w * four


@pytest.mark.parametrize("w,norm_pix,c", [(0.0, False, 3), (0.01, False, 3), (0.5, True, 1)])
def test_loss_matches_numpy(w, norm_pix, c):
  rng = np.random.default_rng(0)
  p = 4
  pred = rng.normal(size=(2, 10, p * p * c)).astype(np.float32)
  target = rng.normal(size=(2, 10, p * p * c)).astype(np.float32)
  mask = (rng.random((2, 10)) < 0.7).astype(np.float32)
  loss, _ = losses.reconstruction_loss(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(mask),
                                       patch_size=p, fourier_weight=w, norm_pix_loss=norm_pix)
  np.testing.assert_allclose(loss, np_loss(pred, target, mask, p, w, norm_pix), rtol=1e-5)


@pytest.mark.parametrize("name,c", [("vit_tiny", 6), ("camae_tiny", 4)])
def test_shapes_and_gradients(name, c):
  model = models.create(name, rngs=nnx.Rngs(0))
  x = jnp.asarray(images(2, 32, c))
  out = model.forward(x, key=jax.random.key(0))
  l = 16 * (c if model.cfg.channel_agnostic else 1)
  assert out["mask"].shape == (2, l)
  assert out["pred"].shape == out["target"].shape
  assert model.embed(x).shape == (2, 64)

  def loss_fn(m):
    return m.compute_loss({"image": x}, jax.random.key(0))[0]
  loss, grads = nnx.jit(nnx.value_and_grad(loss_fn))(model)
  leaves = jax.tree.leaves(grads)
  assert np.isfinite(float(loss)) and all(np.isfinite(g).all() for g in leaves)
  assert sum(float(jnp.abs(g).sum()) > 0 for g in leaves) > 0.9 * len(leaves)


def test_loss_scores_only_masked_tokens():
  model = models.create("vit_tiny", rngs=nnx.Rngs(0))
  x = jnp.asarray(images(2, 32, 6))
  out = model.forward(x, key=jax.random.key(3))
  m = np.asarray(out["mask"], bool)
  loss, _ = model.compute_loss({"image": x}, jax.random.key(3))
  per_token = ((np.asarray(out["pred"]) - np.asarray(out["target"])) ** 2).mean(-1)
  np.testing.assert_allclose(loss, per_token[m].mean(), rtol=1e-5)


@pytest.mark.parametrize("c", [3, 5, 6, 8])
def test_channel_agnostic_any_channel_count(c):
  model = models.create("camae_tiny", rngs=nnx.Rngs(0), max_channels=8, decoder_channels=8)
  x = jnp.asarray(images(2, 32, c))
  assert model.embed(x).shape == (2, 64)
  assert model.embed(x, pool="channelwise").shape == (2, 64 * c)
  r = nnx.jit(lambda m, x: m.reconstruct(x, jax.random.key(0)))(model, x)
  assert r["pred"].shape == (2, 32, 32, c)
  np.testing.assert_allclose(r["mask"].mean(), 0.75, atol=1e-6)


def test_channel_agnostic_tokens_share_weights_across_channels():
  """Permuting channels permutes the channel-wise embedding blocks (no channel embedding)."""
  model = models.create("camae_tiny", rngs=nnx.Rngs(0))
  x = images(1, 32, 3)
  e = np.asarray(model.embed(jnp.asarray(x), pool="channelwise")).reshape(3, 64)
  e_perm = np.asarray(model.embed(jnp.asarray(x[..., [2, 0, 1]]), pool="channelwise")).reshape(3, 64)
  np.testing.assert_allclose(e_perm, e[[2, 0, 1]], atol=1e-4)


def test_decoder_channel_ids_select_stacks():
  model = models.create("camae_tiny", rngs=nnx.Rngs(0))
  x = jnp.asarray(images(2, 32, 2))
  forward = nnx.jit(lambda m, ids: m.forward(x, key=jax.random.key(0), channel_ids=ids)["pred"])
  a = forward(model, jnp.array([0, 1]))
  b = forward(model, jnp.array([4, 5]))
  assert not np.allclose(a, b)


def test_intermediate_block_embedding():
  model = models.create("vit_tiny", rngs=nnx.Rngs(0), depth=3)
  x = jnp.asarray(images(2, 32, 6))
  e1, e3, full = model.embed(x, block=1), model.embed(x, block=3), model.embed(x)
  assert e1.shape == e3.shape == (2, 64)
  assert not np.allclose(e1, full)
  with pytest.raises(ValueError, match="block must be in 1..3"):
    model.embed(x, block=4)


def test_drop_path_only_with_key():
  model = models.create("vit_tiny", rngs=nnx.Rngs(0), drop_path=0.5, layerscale=None)
  tokens = model.encoder.tokenize(jnp.asarray(images(4, 32, 6)))
  a = model.encoder(tokens)
  np.testing.assert_array_equal(a, model.encoder(tokens))
  assert not np.allclose(a, model.encoder(tokens, key=jax.random.key(0)))


@pytest.mark.parametrize("block", ["prenorm", "parallel"])
def test_bfloat16_compute_close_to_float32(block):
  x = jnp.asarray(images(2, 32, 6))
  m32 = models.create("vit_tiny", rngs=nnx.Rngs(0), block=block)
  m16 = models.create("vit_tiny", rngs=nnx.Rngs(0), block=block, dtype="bfloat16")
  assert jax.tree.leaves(nnx.state(m16, nnx.Param))[0].dtype == jnp.float32
  e32, e16 = m32.embed(x), m16.embed(x)
  assert e16.dtype == jnp.float32
  assert np.corrcoef(np.ravel(e32), np.ravel(e16))[0, 1] > 0.99


@pytest.mark.parametrize("name,lo,hi", [("vits16", 21e6, 23e6), ("vitb16", 85e6, 88e6),
                                        ("vitl16", 300e6, 306e6)])
def test_encoder_parameter_counts(name, lo, hi):
  model = nnx.eval_shape(lambda: models.create(name))
  n = sum(np.prod(v.shape) for v in jax.tree.leaves(nnx.state(model.encoder, nnx.Param)))
  assert lo < n < hi


def test_camae_s16_matches_openphenom_size():
  """Parameters plus OpenPhenom's stored position tables equal its 178,045,568 (no fc_norm,
  no frozen CLS placeholder: 768 + 512 fewer); maejax computes the tables, stores none."""
  model = nnx.eval_shape(lambda: models.create("camae_s16"))
  n = sum(np.prod(v.shape) for v in jax.tree.leaves(nnx.state(model)))
  pos = (1 + 11 * 256) * 384 + (1 + 6 * 256) * 512  # CLS row + a table per channel
  assert n + pos + 768 + 512 == 178_045_568


@pytest.mark.parametrize("name", [n for n in models.REGISTRY if "tiny" in n])
def test_registry_models_hold_only_parameters(name):
  """Fixed tables (sin-cos positions) are computed at call time, never stored as state."""
  _, params, rest = nnx.split(models.create(name), nnx.Param, ...)
  assert jax.tree.leaves(params) and not jax.tree.leaves(rest)


def test_every_parameter_has_logical_axes():
  model = models.create("camae_tiny")
  specs = nnx.get_partition_spec(nnx.state(model, nnx.Param))
  leaves = jax.tree.leaves(specs, is_leaf=lambda s: isinstance(s, jax.sharding.PartitionSpec))
  params = jax.tree.leaves(nnx.state(model, nnx.Param))
  assert len(leaves) == len(params)
  for spec, p in zip(leaves, params):
    assert isinstance(spec, jax.sharding.PartitionSpec) and len(spec) == p.ndim
  names = {a for s in leaves for a in s if a}
  assert {"embed", "mlp", "heads", "kv"} <= names


def test_bad_inputs_give_clear_errors():
  std = models.create("vit_tiny")
  with pytest.raises(ValueError, match="expects 6 channels, got 4"):
    std.embed(jnp.asarray(images(1, 32, 4)))
  with pytest.raises(ValueError, match="not divisible by the patch size 8"):
    std.embed(jnp.zeros((1, 30, 32, 6), jnp.uint8))
  ca = models.create("camae_tiny")
  with pytest.raises(ValueError, match="at most 11"):
    ca.embed(jnp.asarray(images(1, 32, 12)))
  with pytest.raises(ValueError, match="unknown model 'vit_huge'"):
    models.create("vit_huge")
  with pytest.raises(ValueError, match="no field 'mask_ration'"):
    models.create("vit_tiny", mask_ration=0.5)
