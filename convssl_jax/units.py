"""k-means units: encoder features -> a codebook -> a units dataset for the unit LM.

`build_units(config, workdir)` (`run.py --config=configs/ulm.py --mode=units`):

1. features: a CPC encoder (a converted or pretrained one, `units.encoder_checkpoint`) runs over
   every conversation channel, chunk by chunk (`FeatureExtractor`: bounded memory, equal to one
   pass over the whole conversation), giving the chosen layer ('conv' = z, 'lstm' = c) at 100 Hz,
   mean-pooled to the model's frame rate;
2. k-means (`kmeans`: k-means++ initialisation, then full-batch Lloyd or mini-batch updates, jit,
   rows sharded over the devices) on up to `units.kmeans.max_frames` frames sampled evenly from
   the training split;
3. every conversation's frames -> nearest centroid, written with its VA and F0 as the units
   dataset (`data/unit_store.py`) in `data.units_dir`, with the codebook.

The reference's early ULM used sklearn's MiniBatchKMeans with k-means++ (reference/vap_spec.md
section 9); these are the same algorithms in JAX.
"""

import functools
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from convssl_jax import corpora as corpora_lib, errors, progress
from convssl_jax.data import audio as audio_lib
from convssl_jax.data import unit_store
from convssl_jax.data import va as va_lib
from convssl_jax.models import cpc, pretrained

HOP = int(np.prod(cpc.STRIDES))  # samples per 100-Hz encoder frame
LAYERS = ('conv', 'lstm')


# k-means.

def sq_distances(x: jax.Array, centroids: jax.Array) -> jax.Array:
  """Squared Euclidean distances [N, K] of rows x [N, D] to centroids [K, D]."""
  x = x.astype(jnp.float32)
  d = (jnp.sum(x * x, -1, keepdims=True) - 2 * x @ centroids.T
       + jnp.sum(centroids * centroids, -1))
  return jnp.maximum(d, 0.0)


@jax.jit
def assign(x: jax.Array, centroids: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(nearest centroid [N] int32, its squared distance [N]) of each row of x."""
  d = sq_distances(x, centroids)
  ids = jnp.argmin(d, axis=-1).astype(jnp.int32)
  return ids, jnp.take_along_axis(d, ids[:, None], -1)[:, 0]


@functools.partial(jax.jit, static_argnums=2)
def kmeans_plusplus(key: jax.Array, x: jax.Array, k: int, weights: jax.Array) -> jax.Array:
  """k-means++ seeding: a first centroid drawn by weight, then each next one with probability
  proportional to weight x squared distance to the nearest centroid chosen so far."""
  x = x.astype(jnp.float32)
  keys = jax.random.split(key, k)
  first = x[jax.random.categorical(keys[0], jnp.log(weights))]
  d2 = sq_distances(x, first[None])[:, 0]

  def body(i, carry):
    centroids, d2 = carry
    p = weights * d2
    # With every point on a centroid already (fewer distinct points than k) draw by weight.
    logits = jnp.log(jnp.where(p.sum() > 0, p, weights))
    c = x[jax.random.categorical(keys[i], logits)]
    return centroids.at[i].set(c), jnp.minimum(d2, sq_distances(x, c[None])[:, 0])

  centroids = jnp.zeros((k, x.shape[1]), jnp.float32).at[0].set(first)
  return jax.lax.fori_loop(1, k, body, (centroids, d2))[0]


@jax.jit
def lloyd_step(x: jax.Array, weights: jax.Array, centroids: jax.Array
               ) -> tuple[jax.Array, jax.Array]:
  """One full-batch Lloyd iteration: (new centroids, weighted inertia before the update). A
  centroid that gets no point stays where it is."""
  ids, d2 = assign(x, centroids)
  k = centroids.shape[0]
  sums = jax.ops.segment_sum(weights[:, None] * x.astype(jnp.float32), ids, k)
  counts = jax.ops.segment_sum(weights, ids, k)
  new = jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1e-12)[:, None], centroids)
  return new, jnp.sum(weights * d2)


@jax.jit
def minibatch_step(x: jax.Array, weights: jax.Array, centroids: jax.Array, counts: jax.Array
                   ) -> tuple[jax.Array, jax.Array]:
  """One mini-batch update (Sculley 2010, sklearn's MiniBatchKMeans): each centroid moves to the
  running mean of every point ever assigned to it. Returns (centroids, counts)."""
  ids, _ = assign(x, centroids)
  k = centroids.shape[0]
  sums = jax.ops.segment_sum(weights[:, None] * x.astype(jnp.float32), ids, k)
  batch_counts = jax.ops.segment_sum(weights, ids, k)
  total = counts + batch_counts
  new = jnp.where(total[:, None] > 0,
                  (centroids * counts[:, None] + sums) / jnp.maximum(total, 1e-12)[:, None],
                  centroids)
  return new, total


def _on_devices(x: np.ndarray, weights: np.ndarray) -> tuple[jax.Array, jax.Array]:
  """Rows padded to a multiple of the device count (weight 0) and sharded over all devices."""
  n = jax.device_count()
  pad = -len(x) % n
  x = np.concatenate([x, np.zeros((pad, x.shape[1]), x.dtype)])
  weights = np.concatenate([weights, np.zeros(pad, np.float32)])
  mesh = jax.make_mesh((n,), ('rows',), axis_types=(jax.sharding.AxisType.Auto,))
  sharding = NamedSharding(mesh, P('rows'))
  return jax.device_put(x, sharding), jax.device_put(weights, sharding)


def kmeans(x: np.ndarray, k: int, *, seed: int = 0, iterations: int = 100, tol: float = 1e-4,
           batch_size: int = 0, weights: np.ndarray | None = None) -> tuple[np.ndarray, float]:
  """(centroids [k, D], weighted inertia) of k-means on rows x [N, D].

  k-means++ seeding, then `iterations` full-batch Lloyd steps (stopping once the inertia improves
  by less than `tol` relative), or with `batch_size` > 0 that many mini-batch steps of
  `batch_size` random rows each.
  """
  if len(x) < k:
    raise ValueError(f'k-means with k={k} needs at least {k} feature frames, got {len(x)}')
  weights = np.ones(len(x), np.float32) if weights is None else np.asarray(weights, np.float32)
  rows, w = _on_devices(np.asarray(x, np.float32), weights)
  key_init, key_batches = jax.random.split(jax.random.key(seed))
  centroids = kmeans_plusplus(key_init, rows, k, w)
  if batch_size > 0:
    counts = jnp.zeros(k, jnp.float32)
    rng = np.random.default_rng(seed)
    for _ in range(iterations):
      batch = rng.choice(len(x), size=min(batch_size, len(x)), replace=False)
      centroids, counts = minibatch_step(rows[batch], w[batch], centroids, counts)
  else:
    previous = np.inf
    for _ in range(iterations):
      centroids, inertia = lloyd_step(rows, w, centroids)
      inertia = float(inertia)
      if previous - inertia <= tol * max(previous, 1e-12) and np.isfinite(previous):
        break
      previous = inertia
  inertia = float(jnp.sum(w * assign(rows, centroids)[1]))
  return np.asarray(centroids), inertia


# Features.

class FeatureExtractor:
  """A CPC encoder layer over whole conversations in fixed-size chunks: bounded memory, one
  compiled shape (two: the first chunk has no left context), the same frames as one pass over
  the whole conversation (in 'reference' padding, all but the last two frames of a
  conversation, which see zeros past its end in place of the padding)."""

  CONTEXT = 4  # 100-Hz frames of audio before a chunk (the receptive field is < 2 frames back)

  def __init__(self, encoder: cpc.CPCEncoder, layer: str, chunk_frames: int):
    if layer not in LAYERS:
      raise errors.ConfigError(f'units.layer must be one of {LAYERS}, got {layer!r}')
    self.chunk_frames = chunk_frames
    self.lookahead = 2 if encoder.padding == 'reference' else 0  # frames (311 samples)
    graphdef, self.params = nnx.split(encoder)
    context = self.CONTEXT

    @functools.partial(jax.jit, static_argnums=3)
    def step(params, carry, wave, first):
      enc = nnx.merge(graphdef, params)
      z = enc.conv_features(wave)
      start = 0 if first else context
      z = z[:, start:start + chunk_frames]
      if layer == 'conv':
        return carry, z
      y, carry = enc.lstm.apply_with_carry(z, carry)
      return carry, y

    self._step = step
    self._carry = encoder.lstm.initial_carry

  def __call__(self, waves: np.ndarray) -> np.ndarray:
    """waves [B, S] float32 (16 kHz) -> features [B, S // 160, D] (100 Hz), float32."""
    frames = waves.shape[1] // HOP
    n_chunks = max(1, -(-frames // self.chunk_frames))
    chunk, context = self.chunk_frames * HOP, self.CONTEXT * HOP
    padded = np.zeros((waves.shape[0], n_chunks * chunk + self.lookahead * HOP), np.float32)
    padded[:, :waves.shape[1]] = waves
    carry, out = self._carry(waves.shape[0]), []
    for c in range(n_chunks):
      begin = c * chunk - (0 if c == 0 else context)
      piece = padded[:, begin:(c + 1) * chunk + self.lookahead * HOP]
      carry, y = self._step(self.params, carry, jnp.asarray(piece), c == 0)
      out.append(np.asarray(y, np.float32))
    return np.concatenate(out, axis=1)[:, :frames]


def pool(features: np.ndarray, frame_hz: int) -> np.ndarray:
  """100-Hz features [..., T, D] -> [..., T // r, D] at `frame_hz` (r = 100 / frame_hz): each
  model frame is the mean of the r encoder frames inside it, so it sees nothing after its end."""
  if 100 % frame_hz:
    raise errors.ConfigError('units need a frame rate that divides 100 Hz, got '
                             f'model.frame_hz={frame_hz}')
  r = 100 // frame_hz
  t = features.shape[-2] // r
  return features[..., :t * r, :].reshape(*features.shape[:-2], t, r, -1).mean(-2)


def load_unit_encoder(units_cfg, seed: int = 0) -> cpc.CPCEncoder:
  """The encoder whose features become units: a `checkpoints_convert` or `--mode=pretrain`
  export (with its stored padding unless `units.padding` says otherwise), or a random causal
  CPC of width `units.encoder_dim` when `units.encoder_checkpoint` is ''."""
  if units_cfg.encoder_checkpoint:
    config = pretrained.read_config(units_cfg.encoder_checkpoint)
    padding = units_cfg.padding or config.get('padding', 'reference')
    return pretrained.load_encoder(units_cfg.encoder_checkpoint, padding=padding)
  logging.warning('units.encoder_checkpoint is empty: units from a randomly initialised encoder')
  return cpc.CPCEncoder(dim=units_cfg.encoder_dim, padding=units_cfg.padding or 'causal',
                        rngs=nnx.Rngs(seed))


def conversation_features(extractor: FeatureExtractor, corpus, indices, frame_hz: int,
                          batch: int, desc: str | None = None):
  """Yields (index, the stored example, features [2, T, D] at frame_hz) of the corpus's
  conversations `indices`, `batch` conversations (2 channels each) per encoder pass; with
  `desc`, under a progress bar so named."""
  indices = list(indices)
  for i in progress.bar(range(0, len(indices), batch), desc=desc, unit='batch',
                        enabled=desc is not None):
    group = indices[i:i + batch]
    examples = [corpus.source[int(j)] for j in group]
    audio = [audio_lib.from_int16(e['audio']).T for e in examples]  # [2, S]
    longest = max(a.shape[1] for a in audio)
    waves = np.zeros((2 * len(group), longest), np.float32)
    for g, a in enumerate(audio):
      waves[2 * g:2 * g + 2, :a.shape[1]] = a
    features = pool(extractor(waves), frame_hz)
    for g, (j, example) in enumerate(zip(group, examples)):
      frames = va_lib.num_frames(corpus.durations[j], frame_hz)
      yield j, example, features[2 * g:2 * g + 2, :frames]


def sample_frames(extractor, corpus, frame_hz: int, max_frames: int, batch: int,
                  seed: int) -> np.ndarray:
  """Up to about `max_frames` feature rows [N, D], the same share of every conversation's
  frames of both channels (at random, seeded), without holding more than one batch's features."""
  total = sum(2 * va_lib.num_frames(d, frame_hz) for d in corpus.durations)
  share = min(1.0, max_frames / max(total, 1))
  rows = []
  for j, _, features in conversation_features(extractor, corpus, range(len(corpus.durations)),
                                              frame_hz, batch, desc='units: k-means sample'):
    flat = features.reshape(-1, features.shape[-1])
    rng = np.random.default_rng([seed, j])
    take = rng.choice(len(flat), size=int(round(share * len(flat))), replace=False)
    rows.append(flat[np.sort(take)])
  return np.concatenate(rows)


def build_units(config) -> pathlib.Path:
  """Features, k-means and the units dataset of `config` (configs/ulm.py) in data.units_dir."""
  if not config.data.units_dir:
    raise errors.ConfigError('--mode=units writes the units dataset to data.units_dir: set '
                             '--config.data.units_dir=DIR')
  u, frame_hz, k = config.units, config.model.frame_hz, config.model.units
  out = pathlib.Path(config.data.units_dir)
  started = time.perf_counter()
  corpora = corpora_lib.open_data(u.data, corpora_lib.SPLITS, frame_hz=frame_hz)
  encoder = load_unit_encoder(u, config.seed)
  extractor = FeatureExtractor(encoder, u.layer, int(u.chunk_s * 100))
  x = sample_frames(extractor, corpora['train'], frame_hz, u.kmeans.max_frames,
                    u.batch_conversations, config.seed)
  logging.info('k-means: k=%d on %d frames of %d dims', k, len(x), x.shape[1])
  centroids, inertia = kmeans(x, k, seed=config.seed, iterations=u.kmeans.iterations,
                              tol=u.kmeans.tol, batch_size=u.kmeans.batch_size)
  if jax.process_index() == 0:
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / unit_store.CODEBOOK, centroids)
  codebook = jnp.asarray(centroids)  # on the device once
  splits = {}
  for split, corpus in corpora.items():
    def records(corpus=corpus):
      for j, example, features in conversation_features(
          extractor, corpus, range(len(corpus.durations)), frame_hz, u.batch_conversations,
          desc=f'units: {split}'):
        flat = features.reshape(-1, features.shape[-1])
        # Rows padded to a power of two: a few compiled shapes, not one per conversation length.
        rows = 1 << (len(flat) - 1).bit_length()
        ids = np.asarray(assign(np.pad(flat, ((0, rows - len(flat)), (0, 0))),
                                codebook)[0])[:len(flat)]
        yield ({'units': ids.reshape(2, -1).T.astype(np.int16), 'va': example['va'],
                'f0': example['f0'], 'session': corpus.sessions[j]}, corpus.durations[j])
    if jax.process_index() == 0:
      splits[split] = unit_store.write_split(out, split, records())
  if jax.process_index() == 0:
    unit_store.write_meta(out, {
        'n_units': k, 'unit_hz': frame_hz, 'layer': u.layer, 'dim': int(x.shape[1]),
        'encoder_checkpoint': u.encoder_checkpoint, 'padding': encoder.padding,
        'corpus': u.data.name, 'kmeans_frames': len(x), 'inertia_per_frame': inertia / len(x),
        'splits': splits})
  logging.info('units dataset in %s (%.0f s)', out, time.perf_counter() - started)
  return out
