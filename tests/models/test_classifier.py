"""WSL classifiers: overfit a tiny labelled set, loss against NumPy, embeddings, bad labels."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from maejax import models
from maejax.models import classifier

K, SMOOTHING = 4, 0.1


def images(b, h, c, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (b, h, h, c), dtype=np.uint8)


def np_smoothed_cross_entropy(logits, labels, k, alpha):
  logits = np.asarray(logits, np.float64)
  log_p = logits - logits.max(-1, keepdims=True)
  log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
  targets = np.full(logits.shape, alpha / k)
  targets[np.arange(len(labels)), labels] += 1 - alpha
  return -(targets * log_p).sum(-1).mean()


# Smallest reachable loss: the entropy of the smoothed target, 0.349 for 4 classes, alpha 0.1.
LOSS_FLOOR = np_smoothed_cross_entropy(np.log([[1 - SMOOTHING + SMOOTHING / K] +
                                               [SMOOTHING / K] * (K - 1)]), [0], K, SMOOTHING)


@pytest.mark.parametrize("name,lr", [("wsl_tiny_cnn", 1e-2), ("wsl_tiny_vit", 2e-3)])
def test_overfits_a_tiny_labelled_set(name, lr):
  """16 random images, 4 classes, 30 Adam steps: memorized (accuracy 1.0) and the loss
  most of the way from log(4) = 1.386 (zero-initialized head) down to the 0.349 floor."""
  model = models.create(name, channels=3, num_classes=K, label_smoothing=SMOOTHING)
  batch = {"image": images(16, 32, 3), "label": np.arange(16, dtype=np.int32) % K}
  opt = nnx.Optimizer(model, optax.adam(lr), wrt=nnx.Param)

  @nnx.jit
  def step(model, opt, key):
    opt.update(model, nnx.grad(lambda m: m.compute_loss(batch, key)[0])(model))

  loss0 = float(model.compute_loss(batch, jax.random.key(0))[0])
  np.testing.assert_allclose(loss0, np.log(K), rtol=1e-5)
  for i in range(30):
    step(model, opt, jax.random.key(i))
  loss, metrics = model.compute_loss(batch, jax.random.key(99))
  logits = model.logits(batch["image"])
  np.testing.assert_array_equal(np.asarray(logits).argmax(-1), batch["label"])
  assert float(metrics["accuracy"]) == 1.0
  assert LOSS_FLOOR - 1e-4 < float(loss) < 0.6
  np.testing.assert_allclose(
      loss, np_smoothed_cross_entropy(logits, batch["label"], K, SMOOTHING), rtol=1e-4)


@pytest.mark.parametrize("name,dim", [("wsl_tiny_cnn", 32), ("wsl_tiny_vit", 64)])
def test_embedding_is_the_penultimate_layer(name, dim):
  model = models.create(name, channels=3)
  x = images(3, 32, 3)
  emb = model.embed(x)
  assert emb.shape == (3, dim) and emb.dtype == jnp.float32
  # The head reads exactly the embedding: logits = emb @ W + b.
  head = model.head
  nnx.update(head, jax.tree.map(lambda p: jax.random.normal(jax.random.key(0), p.shape),
                                nnx.state(head, nnx.Param)))
  w, b = np.asarray(head.kernel[...]), np.asarray(head.bias[...])
  np.testing.assert_allclose(model.logits(x), np.asarray(emb) @ w + b, rtol=1e-4, atol=1e-4)
  assert model.embed(x, block=1).shape[0] == 3


def test_vit_pooling_options():
  model = models.create("wsl_tiny_vit", channels=3, pool="cls")
  x = images(2, 32, 3)
  cls, mean = model.embed(x), model.embed(x, pool="mean")
  assert cls.shape == mean.shape == (2, 64)
  assert not np.allclose(cls, mean)


def test_resnet50_sizes():
  model = nnx.eval_shape(lambda: models.create("wsl_resnet50", rngs=nnx.Rngs(0)))
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  # torchvision ResNet-50: 25,557,032 (3 channels, 1000 classes); + 3 more stem input
  # channels and 139 more classes = 25,851,251; pre-activation norms and conv biases add ~0.1%.
  assert abs(n / 25_851_251 - 1) < 0.002
  emb = nnx.eval_shape(lambda m, x: m.embed(x), model, jax.ShapeDtypeStruct((2, 64, 64, 6),
                                                                           jnp.uint8))
  assert emb.shape == (2, 2048)


def test_labels_out_of_range_are_a_clear_error():
  model = models.create("wsl_tiny_cnn", channels=3)
  x = images(2, 32, 3)
  for bad in ([0, 4], [-1, 0]):
    with pytest.raises(ValueError, match=r"labels must be in \[0, 4\).*num_classes"):
      model.compute_loss({"image": x, "label": np.array(bad, np.int32)}, jax.random.key(0))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 4\)"):
      classifier.check_labels(np.array(bad), 4)
  with pytest.raises(ValueError, match="integer class ids"):
    classifier.check_labels(np.array(["a", "b"]), 4)
  with pytest.raises(ValueError, match="batch has no 'label'"):
    model.compute_loss({"image": x}, jax.random.key(0))
  # In jit nothing can raise: the bad label is counted for the logs.
  _, metrics = nnx.jit(lambda m, b: m.compute_loss(b, jax.random.key(0)))(
      model, {"image": x, "label": jnp.array([1, 7], jnp.int32)})
  assert int(metrics["invalid_labels"]) == 1


def test_encode_labels_rejects_unseen_perturbations():
  classes = ["EMPTY", "geneA", "geneB"]
  np.testing.assert_array_equal(classifier.encode_labels(["geneB", "EMPTY"], classes), [2, 0])
  with pytest.raises(ValueError, match=r"not among the 3 training classes.*geneZ"):
    classifier.encode_labels(["geneA", "geneZ"], classes)


def test_bad_images_are_one_clear_error():
  cnn = models.create("wsl_tiny_cnn", channels=3)
  with pytest.raises(ValueError, match="expects 3 channels"):
    cnn.check_images(images(1, 32, 5))
  with pytest.raises(ValueError, match=r"\[batch, height, width, channels\]"):
    cnn.embed(images(1, 32, 3)[0])
  assert cnn.embed(images(1, 20, 3)).shape == (1, 32)  # Any size: SAME-padded convs.
  vit = models.create("wsl_tiny_vit", channels=3)
  with pytest.raises(ValueError, match="not divisible by the patch size 8"):
    vit.check_images(images(1, 36, 3))
