"""The VAP objective: projection-window labels, losses and zero-shot turn-taking probabilities.

For every frame t the target is the voice activity of both speakers over the next H frames
(t+1 .. t+H, the current frame excluded), summarised as `n_bins` binary bins per speaker. Three
heads model it:

* 'discrete': one class out of 2**(2 n_bins) (256 for 4 bins), softmax + cross-entropy;
* 'independent': one sigmoid per speaker and bin, BCE (also the paper's "independent-40",
  `VAPObjective((0.05,) * 40, frame_hz=100, head='independent', pre_frames=12)`);
* 'comparative': one sigmoid, the share of speaker A in the window's activity, soft BCE.

Zero-shot next-speaker and backchannel probabilities are read from the predicted distribution
through fixed index subsets that depend on the current dialog state (Ekstedt & Skantze 2022).
Class ids are LSB-first over the flattened (speaker, bin) grid: speaker A bin 0 is bit 0 and
speaker B bin n_bins-1 is bit 2 n_bins - 1, so "A active in all 4 bins" is 15 and "B" is 240.

All index sets are numpy constants built at construction; every method is pure jax.numpy, works
on arbitrary leading batch dimensions and can be called inside `jax.jit` with the objective as a
closure constant.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

HEADS = ('discrete', 'independent', 'comparative')
MAX_DISCRETE_BINS = 5  # the reference builds its codebook only up to 2**10 classes


def bin_times_to_frames(bin_times, frame_hz) -> tuple[int, ...]:
  """Bin lengths in frames, float32 product truncated like the reference's `.long()`.

  0.6 s * 50 Hz is 30.000002 in float32 and gives 30; 0.05 s * 50 Hz gives 2, not 3.
  """
  frames = np.asarray(bin_times, np.float32) * np.float32(frame_hz)
  return tuple(int(f) for f in frames)


def codebook(n_bins: int = 4) -> np.ndarray:
  """All classes as bits, [2**(2 n_bins), 2, n_bins] int32: row i is the LSB-first expansion of i."""
  idx = np.arange(2 ** (2 * n_bins))
  bits = (idx[:, None] >> np.arange(2 * n_bins)) & 1
  return bits.reshape(-1, 2, n_bins).astype(np.int32)


def bins_to_class(bins: jax.Array) -> jax.Array:
  """[..., 2, n_bins] {0,1} -> class ids [...] int32: sum of bit[c, b] * 2**(n_bins c + b)."""
  n_bins = bins.shape[-1]
  weights = (2 ** np.arange(2 * n_bins)).reshape(2, n_bins).astype(np.int32)
  return jnp.sum(jnp.asarray(bins).astype(jnp.int32) * weights, axis=(-2, -1))


def class_to_bins(idx: jax.Array, n_bins: int = 4) -> jax.Array:
  """Class ids [...] -> their bins [..., 2, n_bins] int32 (the inverse of `bins_to_class`)."""
  idx = jnp.asarray(idx, jnp.int32)
  bits = (idx[..., None] >> jnp.arange(2 * n_bins, dtype=jnp.int32)) & 1
  return bits.reshape(idx.shape + (2, n_bins))


def dialog_states(va: jax.Array) -> jax.Array:
  """Current dialog state [..., N] int32 from va [..., N, 2]: 0 only A, 1 silence, 2 both, 3 only B.

  The reference's `int(2 vb - va) + 1` (not "0 = silence"), truncating as `.long()` does.
  """
  va = jnp.asarray(va, jnp.float32)
  return (2 * va[..., 1] - va[..., 0]).astype(jnp.int32) + 1


def _ratio(num: jax.Array, den: jax.Array) -> jax.Array:
  """num / den, and 0.5 ("no evidence for either speaker") where den is 0 instead of NaN."""
  ok = den > 0
  return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.5)


def _speaker_subsets(states: np.ndarray, rule) -> np.ndarray:
  """Class ids [2, k] where `rule(own_bins, other_bins)` holds, row 0 with speaker A as "own"."""
  return np.stack([np.flatnonzero(rule(states[:, s], states[:, 1 - s])) for s in (0, 1)]).astype(
      np.int32)


def _nav(x: np.ndarray) -> np.ndarray:
  """Active in the last two bins, earlier bins free (the reference's on_activity_change_mono)."""
  return x[:, -2:].all(-1)


def _eos(x: np.ndarray) -> np.ndarray:
  """Active only in a prefix of at most two bins: 0000, 1000, 1100 (end_of_segment_mono, max=2)."""
  k = x.sum(-1)
  return (k <= 2) & (x == (np.arange(x.shape[-1]) < k[:, None])).all(-1)


def _silent(x: np.ndarray) -> np.ndarray:
  return ~x.any(-1)


# Methods are jitted with the objective as a static argument: an eager call (evaluation, tests)
# then compiles once per input shape instead of dispatching op by op; inside an outer `jax.jit`
# they are simply inlined.
_jit_method = functools.partial(jax.jit, static_argnums=0)


def _matmul(x: jax.Array, y: np.ndarray) -> jax.Array:
  """Full float32 product (no TF32 / bf16 passes on accelerators) with a 0/1 or count matrix."""
  return jnp.matmul(x, y, precision=jax.lax.Precision.HIGHEST)


class VAPObjective:
  """Labels, losses and zero-shot probabilities of one VAP head.

  Attributes:
    bin_frames: bin lengths in frames (float32 truncation, see `bin_times_to_frames`).
    horizon_frames: the label window, `sum(bin_frames)`. The reference also has a second
      definition, `int(float32(sum(bin_times)) * frame_hz)`; both agree for the shipped configs
      (100/50/40 frames at 100/50/20 Hz) but not e.g. for 40 x 0.05 s at 50 Hz (80 vs 100), which
      is refused here. Data pipelines append exactly this many frames.
    n_bins: bins per speaker.
    n_classes: 2**(2 n_bins) when n_bins <= 5, else None (no codebook, e.g. independent-40).
    subset_silence, subset_silence_hold, subset_active, subset_active_hold, subset_backchannel:
      class ids [2, k] (row 0 = speaker A) used by the discrete zero-shot probabilities; None when
      there is no codebook.
  """

  def __init__(self, bin_times=(0.2, 0.4, 0.6, 0.8), frame_hz=50, threshold=0.5,
               head='discrete', pre_frames=2):
    if head not in HEADS:
      raise ValueError(f'head must be one of {HEADS}, got {head!r}')
    self.bin_times = tuple(bin_times)
    self.frame_hz = frame_hz
    self.threshold = threshold
    self.head = head
    self.pre_frames = pre_frames
    self.bin_frames = bin_times_to_frames(self.bin_times, frame_hz)
    if min(self.bin_frames) < 1:
      raise ValueError(f'bin_times {self.bin_times} at {frame_hz} Hz give an empty bin')
    self.n_bins = len(self.bin_frames)
    self.horizon_frames = sum(self.bin_frames)
    spanned = int(np.float32(sum(self.bin_times)) * frame_hz)
    if self.horizon_frames != spanned:  # the reference's second horizon definition disagrees
      raise ValueError(
          f'bin_times {self.bin_times} are not whole frames at {frame_hz} Hz: the bins truncate '
          f'to {self.horizon_frames} frames instead of the {spanned} their times span; use a '
          f'frame rate whose frame divides every bin (e.g. 100 Hz for 50 ms bins)')
    # Window offsets of the bin edges: bin k covers frames t+1+edges[k] .. t+edges[k+1].
    self._edges = tuple(int(e) for e in np.cumsum((0,) + self.bin_frames))
    if head == 'independent' and not 0 <= pre_frames < self.n_bins:
      raise ValueError(f'pre_frames (leading bins dropped) must be in [0, {self.n_bins})')

    self.n_classes = 2 ** (2 * self.n_bins) if self.n_bins <= MAX_DISCRETE_BINS else None
    if self.n_classes is None:
      if head == 'discrete':
        raise ValueError(f'the discrete head needs n_bins <= {MAX_DISCRETE_BINS}')
      self.subset_silence = self.subset_silence_hold = None
      self.subset_active = self.subset_active_hold = self.subset_backchannel = None
      return
    states = codebook(self.n_bins).astype(bool)
    # Silence: one speaker starts (and keeps going) while the other stays silent.
    self.subset_silence = _speaker_subsets(states, lambda own, other: _nav(own) & _silent(other))
    self.subset_silence_hold = self.subset_silence[::-1]
    # Activity: s takes over while the other stops; hold: s stays silent, the other continues.
    self.subset_active = _speaker_subsets(states, lambda own, other: _nav(own) & _eos(other))
    self.subset_active_hold = _speaker_subsets(states, lambda own, other: _silent(own) & _nav(other))
    # Backchannel: s is active somewhere before the last bin but not in it, the other is in it.
    # (The reference defines this set only for 4 bins: 7 * 8 = 56 classes per speaker.)
    self.subset_backchannel = _speaker_subsets(
        states, lambda own, other: own[:, :-1].any(-1) & ~own[:, -1] & other[:, -1])
    # One 0/1 matrix [C, 5 * 2] turns the five subset sums of both speakers into one matmul.
    subsets = (self.subset_silence, self.subset_silence_hold, self.subset_active,
               self.subset_active_hold, self.subset_backchannel)
    membership = np.zeros((self.n_classes, len(subsets), 2), np.float32)
    for i, subset in enumerate(subsets):
      for s in (0, 1):
        membership[subset[s], i, s] = 1
    self._membership = membership.reshape(self.n_classes, -1)

  def _key(self):
    return (self.bin_times, self.frame_hz, self.threshold, self.head, self.pre_frames)

  # Equal configurations are equal objectives, so jitted methods share their compilation cache.
  def __eq__(self, other):
    return isinstance(other, VAPObjective) and self._key() == other._key()

  def __hash__(self):
    return hash(self._key())

  def codebook(self) -> np.ndarray:
    """[n_classes, 2, n_bins] int32 bits of every class."""
    return codebook(self.n_bins)

  # Labels.

  def _window_counts(self, va: jax.Array) -> jax.Array:
    """Active-frame counts per window bin, va [..., N+H, 2] -> [..., N, 2, n_bins] float32.

    The window of frame t is t+1 .. t+H. A cumulative sum turns every bin sum into the difference
    of two of its entries, so the cost does not grow with the bin lengths.
    """
    va = jnp.asarray(va, jnp.float32)
    n = va.shape[-2] - self.horizon_frames
    if n < 1:
      raise ValueError(f'va has {va.shape[-2]} frames; labels need more than the horizon '
                       f'({self.horizon_frames})')
    # csum[i] = sum(va[:i+1]), so the sum over frames t+1+a .. t+b is csum[t+b] - csum[t+a].
    csum = jnp.cumsum(va, axis=-2)
    at_edges = jnp.take(csum, np.arange(n)[:, None] + np.asarray(self._edges), axis=-2,
                        mode='clip')  # [..., N, n_bins+1, 2], all indices in range
    return jnp.swapaxes(jnp.diff(at_edges, axis=-2), -1, -2)

  @_jit_method
  def bins(self, va: jax.Array) -> jax.Array:
    """Binary window bins, va [..., N+H, 2] {0,1} -> [..., N, 2, n_bins] float32 {0,1}.

    A bin is active when the mean activity over its frames is >= threshold.
    """
    ratio = self._window_counts(va) / np.asarray(self.bin_frames, np.float32)
    return (ratio >= self.threshold).astype(jnp.float32)

  @_jit_method
  def labels(self, va: jax.Array) -> jax.Array:
    """Training targets for N frames from va [..., N+H, 2].

    discrete: class ids [..., N] int32; independent: `bins(va)`; comparative: A's share of the
    window's activity [..., N] float32, 0 (not 0.5) when nobody speaks in the window.
    """
    if self.head == 'discrete':
      return bins_to_class(self.bins(va))
    if self.head == 'independent':
      return self.bins(va)
    total = self._window_counts(va).sum(-1)
    return total[..., 0] / (total[..., 0] + total[..., 1] + 1e-9)

  # Losses and probabilities.

  @_jit_method
  def loss(self, logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Scalar mean loss over all frames (and speakers/bins for the independent head).

    logits: discrete [..., N', C]; independent [..., N', 2, n_bins]; comparative [..., N', 1],
    with N' >= N: frames past the labels (a model run over all N+H frames) are dropped.
    """
    frame_axis = labels.ndim - (3 if self.head == 'independent' else 1)
    logits = jax.lax.slice_in_dim(logits, 0, labels.shape[frame_axis], axis=frame_axis)
    logits = logits.astype(jnp.float32)
    if self.head == 'discrete':
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels.astype(jnp.int32)).mean()
    targets = labels if self.head == 'independent' else labels[..., None]
    return optax.sigmoid_binary_cross_entropy(logits, targets.astype(jnp.float32)).mean()

  @_jit_method
  def probs(self, logits: jax.Array) -> jax.Array:
    """Softmax over classes (discrete) or sigmoid (independent, comparative), in float32."""
    logits = jnp.asarray(logits).astype(jnp.float32)
    if self.head == 'discrete':
      return jax.nn.softmax(logits, axis=-1)
    return jax.nn.sigmoid(logits)

  def _subset_mass(self, probs: jax.Array) -> jax.Array:
    """Total probability of every subset [..., 5, 2]: silence, silence_hold, active, active_hold,
    backchannel (in that order) of speakers A, B."""
    mass = _matmul(probs, self._membership)
    return mass.reshape(mass.shape[:-1] + (5, 2))

  @_jit_method
  def next_speaker_probs(self, probs: jax.Array, va: jax.Array) -> jax.Array:
    """P(next speaker) [..., N, 2] from `probs(logits)` and the current frames va [..., N, 2].

    From "silence" and "active" scores sil, act [..., 2] of each speaker:
    silence -> sil; only A -> (1 - act_B, act_B); only B -> (act_A, 1 - act_A);
    both -> act / (act_A + act_B). Where the reference divides 0 by 0 (a subset with no mass,
    only possible for hand-made or underflowed probabilities) this returns 0.5 instead of NaN.
    """
    probs = jnp.asarray(probs, jnp.float32)
    if self.head == 'discrete':
      mass = self._subset_mass(probs)  # q_s = P(pos_s) / (P(pos_s) + P(neg_s))
      sil = _ratio(mass[..., 0, :], mass[..., 0, :] + mass[..., 1, :])
      act = _ratio(mass[..., 2, :], mass[..., 2, :] + mass[..., 3, :])
    elif self.head == 'independent':
      total = probs.sum(-1)
      sil = _ratio(total, total.sum(-1, keepdims=True))
      late = probs[..., self.pre_frames:].sum(-1)  # drops the first `pre_frames` BINS
      act = _ratio(late, late.sum(-1, keepdims=True))
    else:
      sil = act = jnp.concatenate([probs, 1 - probs], axis=-1)
    only_a = jnp.stack([1 - act[..., 1], act[..., 1]], axis=-1)
    only_b = jnp.stack([act[..., 0], 1 - act[..., 0]], axis=-1)
    both = _ratio(act, act.sum(-1, keepdims=True))
    ds = dialog_states(va)[..., None]
    return jnp.select([ds == 1, ds == 0, ds == 3, ds == 2], [sil, only_a, only_b, both], 0.0)

  @_jit_method
  def backchannel_probs(self, probs: jax.Array) -> jax.Array:
    """P(speaker s is about to backchannel) [..., N, 2], index 0 = A as the backchanneler.

    discrete: total probability of `subset_backchannel[s]`. independent: the max m of s's bins
    before the last, if s's last bin is below the other speaker's last bin and m is above it,
    else 0. The comparative head has none.
    """
    probs = jnp.asarray(probs, jnp.float32)
    if self.head == 'discrete':
      return self._subset_mass(probs)[..., 4, :]
    if self.head == 'independent':
      last = probs[..., -1]
      early_max = probs[..., :-1].max(-1)
      return jnp.where((last < last[..., ::-1]) & (early_max > last), early_max, 0.0)
    raise ValueError('the comparative head has no backchannel probabilities')

  @functools.partial(jax.jit, static_argnums=(0, 2, 3))
  def aggregate_probs(self, probs: jax.Array, from_bin: int, to_bin: int) -> jax.Array:
    """Expected active-bin count per speaker over bins from_bin..to_bin (inclusive), normalised.

    The stereo VAP model's p_now / p_future, discrete head only: [..., N, C] -> [..., N, 2],
    counts / (count_A + count_B + 1e-5).
    """
    if self.head != 'discrete':
      raise ValueError('aggregate_probs needs the discrete head')
    counts = codebook(self.n_bins)[:, :, from_bin:to_bin + 1].sum(-1).astype(np.float32)  # [C, 2]
    expected = _matmul(jnp.asarray(probs, jnp.float32), counts)
    return expected / (expected.sum(-1, keepdims=True) + 1e-5)

  def p_now(self, probs: jax.Array) -> jax.Array:
    """Aggregated next-speaker probabilities over the near future, bins 0-1."""
    return self.aggregate_probs(probs, 0, 1)

  def p_future(self, probs: jax.Array) -> jax.Array:
    """Aggregated next-speaker probabilities over the far future, bins 2-3."""
    return self.aggregate_probs(probs, 2, 3)


def for_model(model_cfg) -> VAPObjective:
  """The objective of a `config.model`: its VAP head, bins and frame rate."""
  v = model_cfg.vap
  return VAPObjective(bin_times=tuple(v.bin_times), frame_hz=model_cfg.frame_hz,
                      threshold=v.threshold, head=v.head, pre_frames=v.pre_frames)


def frame_outputs(objective: VAPObjective, out: dict[str, jax.Array],
                  va: jax.Array | None = None, frames: int | None = None) -> dict[str, jax.Array]:
  """A model's outputs [B, N, ...] -> per-frame curves [B, N, 2]: 'p_bc' (not for the comparative
  head), 'p_now' and 'p_future' (discrete head), 'vad' (stereo), and with the current VA
  [B, N, 2] the next-speaker probability 'p'. `frames` keeps only the first frames of `out`."""
  out = {k: out[k][:, :frames] for k in ('logits', 'vad') if k in out}
  probs = objective.probs(out['logits'])
  curves = {}
  if va is not None:
    curves['p'] = objective.next_speaker_probs(probs, va)
  if objective.head != 'comparative':
    curves['p_bc'] = objective.backchannel_probs(probs)
  if objective.head == 'discrete':
    curves.update(p_now=objective.p_now(probs), p_future=objective.p_future(probs))
  if 'vad' in out:
    curves['vad'] = jax.nn.sigmoid(out['vad'].astype(jnp.float32))
  return curves
