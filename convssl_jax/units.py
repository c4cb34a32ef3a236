"""k-means units: encoder features -> a codebook -> a units dataset for the unit LM.

`build_units(config, workdir)` (`run.py --config=configs/ulm.py --mode=units`):

1. features: the encoder of `units.encoder_checkpoint` runs over every conversation channel and
   gives the layer `units.layer`, mean-pooled to the model's frame rate: a CPC encoder (a
   converted or pretrained one) chunk by chunk (`FeatureExtractor`: bounded memory, equal to one
   pass over the whole conversation), layer 'conv' (z) or 'lstm' (c) at 100 Hz; or a converted
   HuBERT / wav2vec2 / WavLM encoder (`SSLFeatureExtractor`: windows with context on both sides,
   as these attend over their whole input), transformer layer k (torchaudio's
   `extract_features()[k - 1]`) at 50 Hz, frame t in step with VA frame t;
2. k-means (`kmeans`: k-means++ initialisation, then full-batch Lloyd or mini-batch updates, jit,
   rows sharded over the devices) on frames sampled evenly from the training split (the same
   share of every conversation's speakers' channels), as many as `units.kmeans.max_frames` and
   the float32 feature budget `units.kmeans.max_feature_memory_gb` (conv_ssl's
   `--kmeans_max_feature_memory`) allow;
3. every conversation's frames -> nearest centroid, written with its VA, F0 and monologue flag
   as the units dataset (`data/unit_store.py`) in `data.units_dir`, with the codebook.

The reference's early ULM used sklearn's MiniBatchKMeans with k-means++ on HuBERT Base layer 6,
wav2vec2, WavLM or CPC features (reference/vap_spec.md section 9); these are the same algorithms
in JAX.
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
from convssl_jax.models import cpc, pretrained, ssl_encoders

HOP = int(np.prod(cpc.STRIDES))  # samples per 100-Hz encoder frame
LAYERS = ('conv', 'lstm')  # CPC's; a HuBERT-family encoder's are its transformer layers 1..L


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
  rate_hz = 100

  def __init__(self, encoder: cpc.CPCEncoder, layer: str, chunk_frames: int):
    if layer not in LAYERS:
      raise errors.ConfigError(f'units.layer must be one of {LAYERS} for a CPC encoder, got '
                               f'{layer!r}')
    self.chunk_frames, self.dim = chunk_frames, encoder.convs[-1].out_features
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

  def conversations(self, audio: list[np.ndarray]) -> list[np.ndarray]:
    """Conversations' channels [2, S_i] -> their features [2, S_i // 160, D], in one batch (the
    shorter ones zero-padded: the encoder is causal, so padding changes none of their frames)."""
    waves = np.zeros((2 * len(audio), max(a.shape[1] for a in audio)), np.float32)
    for g, a in enumerate(audio):
      waves[2 * g:2 * g + 2, :a.shape[1]] = a
    features = self(waves)
    return [features[2 * g:2 * g + 2, :a.shape[1] // HOP] for g, a in enumerate(audio)]


class SSLFeatureExtractor:
  """A HuBERT / wav2vec2 / WavLM layer over whole conversations at the encoder's rate (50 Hz).

  These encoders attend over their whole input, so a long conversation is cut into windows of
  `chunk + 2 context` frames; each frame is taken from the window in which it has `context`
  frames of audio on either side (or all there is, at the conversation's ends), so memory is
  bounded and every compiled window has one shape. A conversation that fits in one window is
  one pass over it, right-padded with field - hop zeros exactly as the VAP model's front-end
  hears it: S samples give S // hop frames, frame t covering samples [hop t, hop t + field), in
  step with VA frame t. `rows` windows go through the encoder at a time. (Base models' group-norm
  extractors and Large models' waveform standardisation see a window's statistics.)
  """

  def __init__(self, encoder: ssl_encoders.SSLEncoder, chunk_frames: int, context_frames: int,
               rows: int):
    c = encoder.config
    self.hop, self.extra = c.hop, c.receptive_field - c.hop
    self.rate_hz, self.dim = audio_lib.SAMPLE_RATE // c.hop, c.dim
    self.chunk, self.context, self.rows = chunk_frames, context_frames, rows
    graphdef, self.params = nnx.split(encoder)
    self._run = jax.jit(lambda params, waves: nnx.merge(graphdef, params)(waves))

  @property
  def window(self) -> int:
    return self.chunk + 2 * self.context

  def plan(self, frames: int) -> list[tuple[int, int, int]]:
    """(window start, first kept frame, end of the kept frames) covering `frames` frames once:
    window i starts at i chunk while it ends before the last frame, a last window ends there."""
    if frames <= self.window:
      return [(0, 0, frames)]
    plan, start = [], 0
    while start + self.window < frames:
      first = 0 if not plan else start + self.context
      plan.append((start, first, start + self.context + self.chunk))
      start += self.chunk
    plan.append((frames - self.window, plan[-1][2], frames))
    return plan

  def __call__(self, wave: np.ndarray) -> np.ndarray:
    """One conversation's channels [C, S] float32 (16 kHz) -> features [C, S // hop, D]."""
    channels, samples = wave.shape
    frames = samples // self.hop
    padded = np.concatenate([wave, np.zeros((channels, self.extra), np.float32)], axis=1)
    plan = self.plan(frames)
    if len(plan) == 1:  # the whole conversation, as the VAP model's front-end hears it
      pieces, rows, length = padded, channels, frames
    else:  # windows of one shape (a group-norm extractor's statistics are the window's)
      length = self.window
      pieces = np.concatenate([padded[:, self.hop * s:self.hop * (s + length) + self.extra]
                               for s, _, _ in plan])
      rows = self.rows
    out = []
    for i in range(0, len(pieces), rows):
      batch = np.zeros((rows, pieces.shape[1]), np.float32)
      batch[:len(pieces[i:i + rows])] = pieces[i:i + rows]
      out.append(np.asarray(self._run(self.params, jnp.asarray(batch)), np.float32))
    windows = np.concatenate(out)[:len(pieces)].reshape(len(plan), channels, length, self.dim)
    features = np.zeros((channels, frames, self.dim), np.float32)
    for (start, first, end), window in zip(plan, windows):
      features[:, first:end] = window[:, first - start:end - start]
    return features

  def conversations(self, audio: list[np.ndarray]) -> list[np.ndarray]:
    """Conversations' channels [2, S_i] -> their features [2, S_i // hop, D], each on its own."""
    return [self(a) for a in audio]


def pooling(rate_hz: int, frame_hz: int) -> int:
  """Encoder frames per model frame; ConfigError unless the model's rate divides the encoder's."""
  if rate_hz % frame_hz:
    raise errors.ConfigError(f'units need a frame rate that divides {rate_hz} Hz (the '
                             f"encoder's), got model.frame_hz={frame_hz}")
  return rate_hz // frame_hz


def pool(features: np.ndarray, frame_hz: int, rate_hz: int = 100) -> np.ndarray:
  """Features [..., T, D] at `rate_hz` -> [..., T // r, D] at `frame_hz` (r = rate / frame_hz):
  each model frame is the mean of the r encoder frames inside it, so it sees nothing after its
  end."""
  r = pooling(rate_hz, frame_hz)
  t = features.shape[-2] // r
  return features[..., :t * r, :].reshape(*features.shape[:-2], t, r, -1).mean(-2)


def ssl_layer(units_cfg, config: ssl_encoders.SSLConfig, name: str) -> int:
  """`units.layer` as the transformer layer k in 1..L of a converted HuBERT-family encoder."""
  layer = str(units_cfg.layer)
  if not layer.isdigit() or not 1 <= int(layer) <= config.num_layers:
    raise errors.ConfigError(
        f'units.layer={layer!r}: the {name} encoder in {units_cfg.encoder_checkpoint} takes a '
        f"transformer layer 1..{config.num_layers} (torchaudio's extract_features()[k - 1]; "
        'conv_ssl took layer 6 of HuBERT Base), e.g. --config.units.layer=6')
  if units_cfg.padding:
    raise errors.ConfigError(f'units.padding={units_cfg.padding!r} is for CPC encoders; the '
                             f'{name} encoder has none: leave it empty')
  return int(layer)


def load_unit_encoder(units_cfg, seed: int = 0) -> cpc.CPCEncoder | ssl_encoders.SSLEncoder:
  """The encoder whose features become units: a `checkpoints_convert` output (CPC, HuBERT,
  wav2vec2 or WavLM; a HuBERT-family one computing layers up to `units.layer` only) or a
  `--mode=pretrain` export (CPC with its stored padding unless `units.padding` says otherwise),
  or a random causal CPC of width `units.encoder_dim` when `units.encoder_checkpoint` is ''."""
  directory = units_cfg.encoder_checkpoint
  if directory:
    config = pretrained.read_config(directory)
    if config.get('name') in ssl_encoders.NAMES:
      layer = ssl_layer(units_cfg, pretrained.ssl_config(directory), config['name'])
      return pretrained.load_encoder(directory, output_layer=layer)
    padding = units_cfg.padding or config.get('padding', 'reference')
    return pretrained.load_encoder(directory, padding=padding)
  logging.warning('units.encoder_checkpoint is empty: units from a randomly initialised encoder')
  return cpc.CPCEncoder(dim=units_cfg.encoder_dim, padding=units_cfg.padding or 'causal',
                        rngs=nnx.Rngs(seed))


def feature_extractor(encoder, units_cfg) -> FeatureExtractor | SSLFeatureExtractor:
  """The extractor of `units.layer` of `encoder`, in `units.chunk_s` pieces."""
  if isinstance(encoder, ssl_encoders.SSLEncoder):
    hz = audio_lib.SAMPLE_RATE // encoder.config.hop
    return SSLFeatureExtractor(encoder, round(units_cfg.chunk_s * hz),
                               round(units_cfg.context_s * hz), 2 * units_cfg.batch_conversations)
  return FeatureExtractor(encoder, units_cfg.layer, round(units_cfg.chunk_s * 100))


def conversation_features(extractor, corpus, indices, frame_hz: int, batch: int,
                          desc: str | None = None):
  """Yields (index, the stored example, features [2, T, D] at frame_hz) of the corpus's
  conversations `indices`, read `batch` conversations at a time; with `desc`, under a progress
  bar so named."""
  indices = list(indices)
  for i in progress.bar(range(0, len(indices), batch), desc=desc, unit='batch',
                        enabled=desc is not None):
    group = indices[i:i + batch]
    examples = [corpus.source[int(j)] for j in group]
    audio = [audio_lib.from_int16(e['audio']).T for e in examples]  # [2, S]
    for j, example, features in zip(group, examples, extractor.conversations(audio)):
      frames = va_lib.num_frames(corpus.durations[j], frame_hz)
      yield j, example, pool(features, frame_hz, extractor.rate_hz)[:, :frames]


def max_sample_frames(units_cfg, dim: int) -> int:
  """The frames k-means may take: `units.kmeans.max_frames`, and no more than the float32
  features of `units.kmeans.max_feature_memory_gb` (10^9 bytes, conv_ssl's unit) hold."""
  k = units_cfg.kmeans
  return int(min(k.max_frames, k.max_feature_memory_gb * 1e9 // (4 * dim)))


def sample_frames(extractor, corpus, frame_hz: int, max_frames: int, batch: int,
                  seed: int) -> np.ndarray:
  """Up to `max_frames` feature rows [N, extractor.dim], the same share of every conversation's
  frames of the channels that hold a speaker (a monologue's pretend partner is left out), at
  random (seeded), written into one array of the sample's size: memory is the sample plus one
  batch's features."""
  channels = [[0] if m else [0, 1] for m in corpus.monologue]
  frames = [len(c) * va_lib.num_frames(d, frame_hz) for c, d in zip(channels, corpus.durations)]
  share = min(1.0, max_frames / max(sum(frames), 1))
  sizes = [int(share * n) for n in frames]
  sample, filled = np.empty((sum(sizes), extractor.dim), np.float32), 0
  for j, _, features in conversation_features(extractor, corpus, range(len(corpus.durations)),
                                              frame_hz, batch, desc='units: k-means sample'):
    flat = features[channels[j]].reshape(-1, features.shape[-1])
    take = np.random.default_rng([seed, j]).choice(len(flat), size=min(sizes[j], len(flat)),
                                                   replace=False)
    sample[filled:filled + len(take)] = flat[np.sort(take)]
    filled += len(take)
  return sample[:filled]


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
  extractor = feature_extractor(encoder, u)
  pooling(extractor.rate_hz, frame_hz)  # the rates fit, or say so before any work
  x = sample_frames(extractor, corpora['train'], frame_hz, max_sample_frames(u, extractor.dim),
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
                'f0': example['f0'], 'session': corpus.sessions[j],
                'monologue': bool(corpus.monologue[j])}, corpus.durations[j])
    if jax.process_index() == 0:
      splits[split] = unit_store.write_split(out, split, records())
  if jax.process_index() == 0:
    unit_store.write_meta(out, {
        'n_units': k, 'unit_hz': frame_hz, 'layer': u.layer, 'dim': int(x.shape[1]),
        'encoder_checkpoint': u.encoder_checkpoint, 'encoder_hz': extractor.rate_hz,
        'padding': encoder.padding if isinstance(encoder, cpc.CPCEncoder) else None,
        'corpus': u.data.name, 'kmeans_frames': len(x), 'inertia_per_frame': inertia / len(x),
        'splits': splits})
  logging.info('units dataset in %s (%.0f s)', out, time.perf_counter() - started)
  return out
