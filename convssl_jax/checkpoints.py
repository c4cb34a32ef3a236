"""The training run's checkpoint store: model/optimizer state, data iterator and metadata.

Every checkpoint is one Orbax composite step directory `<dir>/<step>/` with four items:

* 'state': any pytree of jax arrays (an `nnx.State` or a plain nested dict), `StandardSave`;
* 'data': the grain iterator position (one JSON file per process), only when an iterator is
  given, so a resumed run sees exactly the batches an uninterrupted run would have seen;
* 'meta': a JSON dict of the caller's bookkeeping (best loss, plateau counters, ...);
* 'checksums': a 64-bit digest of every array (`_array_digests`) and the SHA-256 of the meta
  and of each process's iterator position.

Saves are asynchronous: arrays are copied off the device and the iterator position and meta
are captured before `save` returns, the files are written in the background. Orbax writes a
step under a temporary name and renames it when complete, coordinates the processes of a
multi-host run itself and ignores the temporary directory of a save that was killed.

A second manager under `<dir>/best` keeps the single checkpoint with the lowest validation
value (state and meta only), in `<dir>/best/<training step>`. Orbax saves only steps after the
latest it holds, so a run that resumed from an older checkpoint and finds a new best at a step
at or before the stored best's takes the next number after it instead; the training step and the
value are in its meta, which is what readers use (`best_step`, `restore_best`, `restore_part`).
Workdirs from before, whose best was numbered by a counter (`best/2` for step 20), read the same.

The checksums are computed from the values being saved, on the host, before `save` returns, and
committed in the same rename as the arrays: no step is ever without them. Every restore
recomputes them from what it read and treats a mismatch like an unreadable step (the previous
one is used, the damaged step named). Orbax and TensorStore check no content: their zstd frames
carry no checksum and incompressible float data is stored raw, so flipped bits in a large array
read back silently as other numbers. Costs: benchmarks/checkpoint_checksums.py.
"""

import hashlib
import json
import math
import re
import sys

from absl import logging
from etils import epath
import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as preservation_lib

from convssl_jax import errors

_STATE, _DATA, _META, _CHECKSUMS = 'state', 'data', 'meta', 'checksums'
_CHECKSUM_VERSION = 1  # of the 'checksums' item and the array digest: never change what 1 means
_BEST_DIR = 'best'
_BEST_STEP, _BEST_VALUE = 'best_step', 'best_value'  # keys added to the best checkpoint's meta


class CheckpointMismatchError(errors.UserError, ValueError):
  """The abstract state does not match a stored checkpoint's tree."""


class CheckpointRestoreError(errors.UserError, RuntimeError):
  """No stored checkpoint could be read (or every one read back damaged)."""


class CheckpointDamagedError(Exception):
  """A checkpoint read back other content than was saved (its checksums do not match)."""


# Content checksums.

_SEED = np.uint64(0x9E3779B97F4A7C15)
_FMIX = (np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53), None)
_BLOCK_WORDS = 1 << 16  # digested at a time: numpy's temporaries stay in the CPU's cache


def _words(data: np.ndarray) -> np.ndarray:
  """The stored bits of `data` as uint32 words: one per element, two (a trailing axis) for
  8-byte dtypes."""
  data = np.ascontiguousarray(data)
  if data.dtype == np.bool_:
    return data.astype(np.uint32)
  size = data.dtype.itemsize
  if size == 8:
    return data.view(np.uint32).reshape(*data.shape, 2)
  if size == 4:
    return data.view(np.uint32)
  return data.view({1: np.uint8, 2: np.uint16}[size]).astype(np.uint32)


def _hash_sum(words: np.ndarray, index: np.ndarray, out: np.ndarray, tmp: np.ndarray) -> int:
  """sum mod 2**64 of fmix64(index * 2**32 + word + seed) (fmix64: MurmurHash3's 64-bit
  finalizer, a bijection that mixes every bit into every bit); `out`, `tmp`: scratch."""
  np.left_shift(index, np.uint64(32), out=out)
  np.add(out, words, out=out, casting='unsafe')
  out += _SEED
  for multiplier in _FMIX:
    np.right_shift(out, np.uint64(33), out=tmp)
    out ^= tmp
    if multiplier is not None:
      out *= multiplier
  return int(out.sum(dtype=np.uint64))


def _shard_sum(data: np.ndarray, index: tuple, shape: tuple) -> int:
  """The digest sum of one shard: `data` at `index` (slices of the array's `shape`; a scalar is
  an array of one), block by block, each word at its row-major index in the whole array."""
  if data.ndim == 0:
    data, index, shape = data.reshape(1), (slice(0, 1),), (1,)
  words, start = _words(data), [s.start or 0 for s in index]
  if words.ndim > data.ndim:  # 8-byte elements: two words each
    shape, start = (*shape, 2), [*start, 0]
  local, words = words.shape, words.reshape(-1)
  strides = [int(np.prod(shape[a + 1:])) for a in range(len(shape))]
  contiguous = tuple(local[1:]) == tuple(shape[1:])  # whole rows: one run of the flat array
  out = np.empty(min(words.size, _BLOCK_WORDS), np.uint64)
  tmp, total = np.empty_like(out), 0
  for b in range(0, words.size, _BLOCK_WORDS):
    n = min(_BLOCK_WORDS, words.size - b)
    at = np.arange(b, b + n, dtype=np.uint64)
    if contiguous:
      at += np.uint64(start[0] * strides[0])
    else:
      at = sum((np.uint64(s) + i.astype(np.uint64)) * np.uint64(stride)
               for s, i, stride in zip(start, np.unravel_index(at, local), strides))
    total += _hash_sum(words[b:b + n], at, out[:n], tmp[:n])
  return total


def _local_sum(leaf) -> int:
  """This process's part of a leaf's digest: its addressable shards that are replica 0 (a
  host array counts on process 0)."""
  if not isinstance(leaf, jax.Array):
    data = np.asarray(leaf)
    full = tuple(slice(0, n) for n in data.shape)
    return _shard_sum(data, full, data.shape) if jax.process_index() == 0 else 0
  return sum(_shard_sum(np.asarray(s.data), s.index, leaf.shape)
             for s in leaf.addressable_shards if s.replica_id == 0)


def _array_digests(tree) -> dict[str, list]:
  """'/'-joined key path -> [dtype, shape, digest] of every array of `tree` (all processes take
  part). The digest, 16 hex digits, is the sum mod 2**64 over an array's stored words (uint32;
  two per 8-byte element) of fmix64(i * 2**32 + word_i + seed), i the word's row-major index:
  a sum of hashed (index, word) pairs (an additive multiset hash). Each process sums the
  shards it holds (replica 0 of each) and the processes' sums are added: no array is gathered,
  and the digest does not depend on the sharding (a checkpoint saved over 8 devices verifies
  when restored onto 1). A changed word changes its term to an unrelated value: random damage
  goes unnoticed with probability about 2**-64."""
  raw = lambda x: jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x
  flat = {'/'.join(map(str, path)): raw(leaf)
          for path, leaf in ocp.tree.to_flat_dict(tree).items()}
  sums = np.array([_local_sum(leaf) % 2 ** 64 for leaf in flat.values()], np.uint64)
  if jax.process_count() > 1:  # gathered as uint32 halves: jax holds no uint64 without x64
    from jax.experimental import multihost_utils
    halves = np.asarray(multihost_utils.process_allgather(sums.view(np.uint32)))
    sums = halves.astype(np.uint32).reshape(jax.process_count(), -1).view(np.uint64).sum(
        axis=0, dtype=np.uint64)
  return {k: [str(leaf.dtype), list(leaf.shape), f'{int(d):016x}']
          for (k, leaf), d in zip(flat.items(), sums)}


def _json_digest(value) -> str:
  return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _iterator_digest(iterator) -> str:
  """SHA-256 (16 hex digits) of a grain iterator's position, as its checkpoint item holds it."""
  state = iterator.get_state()
  data = state if isinstance(state, bytes) else json.dumps(state, sort_keys=True).encode()
  return hashlib.sha256(data).hexdigest()[:16]


def _iterator_digests(iterator) -> list[str] | None:
  """Every process's `_iterator_digest`, in process order (all processes take part)."""
  if iterator is None:
    return None
  mine = _iterator_digest(iterator)
  if jax.process_count() == 1:
    return [mine]
  from jax.experimental import multihost_utils
  words = np.frombuffer(bytes.fromhex(mine), np.uint32)
  gathered = np.asarray(multihost_utils.process_allgather(words)).reshape(-1, words.size)
  return [row.astype(np.uint32).tobytes().hex() for row in gathered]


def _on_every_process(flag: bool) -> bool:
  """Whether `flag` holds on every process (all processes take part)."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils
  return bool(np.all(multihost_utils.process_allgather(np.int32(flag))))


def _checksums(state, meta, data_iterator) -> dict:
  """The 'checksums' item of a checkpoint of `state`, `meta` (as saved) and the iterator."""
  return {'version': _CHECKSUM_VERSION, 'arrays': _array_digests(state),
          'meta': _json_digest(meta), 'data': _iterator_digests(data_iterator)}


def _verify(where, checksums, state, meta=None, data_iterator=None):
  """Raises CheckpointDamagedError naming what of checkpoint `where` read back other than saved:
  the arrays of `state` (all or a part of the saved tree, same key paths), `meta` and this
  process's iterator position when given. `checksums` None: a checkpoint saved before they
  existed, restored with a warning."""
  if checksums is None:
    logging.warning('%s has no checksums (saved by an older version): restored unverified',
                    where)
    return
  if checksums.get('version') != _CHECKSUM_VERSION:
    raise CheckpointDamagedError(f'unknown checksums version {checksums.get("version")!r}')
  saved, restored = checksums['arrays'], _array_digests(state)
  unknown = [p for p in restored if p not in saved]
  cast = [p for p in restored if p in saved and saved[p][:2] != restored[p][:2]]
  differ = [p for p in restored if p in saved and saved[p] != restored[p] and p not in cast]
  problems = [f'{len(paths)} of {len(restored)} arrays {what} ({_some(paths)})'
              for paths, what in ((differ, 'differ from what was saved'),
                                  (unknown, 'have no checksum')) if paths]
  if meta is not None and _json_digest(meta) != checksums['meta']:
    problems.append('its meta differs from what was saved')
  if data_iterator is not None and checksums['data'] is not None:  # one verdict for all
    mine = _iterator_digest(data_iterator) in checksums['data'][jax.process_index():][:1]
    if not _on_every_process(mine):
      problems.append('its data iterator position differs from what was saved')
  if cast:  # restored into another dtype: their bits differ by design
    logging.warning('%s: %d arrays restored into another dtype were not verified (%s)', where,
                    len(cast), _some(cast))
  if problems:
    raise CheckpointDamagedError('damaged, its checksums do not match: ' + '; '.join(problems))


def _some(paths, n=2):
  return ', '.join(paths[:n]) + (', ...' if len(paths) > n else '')


def _describe(error) -> str:
  """One line for a failed restore: the error and its causes, first lines only, without
  TensorStore's JSON spec dumps."""
  parts = []
  while error is not None and len(parts) < 3:
    text = str(error).strip().split('\n')[0]
    text = re.sub(r'\s*(See full TensorStore details:.*|\[tensorstore_spec.*)$', '', text)
    parts.append(text if isinstance(error, CheckpointDamagedError)
                 else f'{type(error).__name__}: {text}'[:400])
    error = error.__cause__ or error.__context__
  return ' <- '.join(parts)


def _quiet_orphaned_loop_callbacks():
  """Drops the 'Event loop is closed' errors of reads that a failed restore left in flight.

  Orbax runs a restore's TensorStore reads in a fresh asyncio loop and closes it as soon as one
  read fails; the sibling reads still complete later, and their completion callbacks
  (`loop.call_soon_threadsafe` from a TensorStore thread) find the loop closed. Python reports
  each as an unraisable RuntimeError: dozens of tracebacks around the one real error. Nothing
  awaits those results any more, so exactly these are dropped (other unraisable errors still
  reach the previous hook); installed once, for the rest of the process, as late callbacks may
  come at any time.
  """
  previous = sys.unraisablehook
  if getattr(previous, 'drops_orphaned_loop_callbacks', False):
    return

  def hook(unraisable):
    error, frames = unraisable.exc_value, []
    tb = unraisable.exc_traceback
    while tb is not None:
      frames.append(tb.tb_frame.f_code.co_name)
      tb = tb.tb_next
    if not (isinstance(error, RuntimeError) and str(error) == 'Event loop is closed'
            and 'call_soon_threadsafe' in frames):
      previous(unraisable)

  hook.drops_orphaned_loop_callbacks = True
  sys.unraisablehook = hook


def _handlers(state_handler=None):
  """The item handlers of a checkpoint; explicit, so that `item_metadata` reads a step before
  anything was saved or restored."""
  return {_STATE: state_handler or ocp.StandardCheckpointHandler(),
          _DATA: grain.checkpoint.CheckpointHandler(), _META: ocp.JsonCheckpointHandler(),
          _CHECKSUMS: ocp.JsonCheckpointHandler()}


def _manager(directory, keep, name):
  """An async Orbax manager that keeps the latest `keep` composite checkpoints.

  `name` prefixes its multi-host barrier keys: without it, concurrent async saves of two
  managers at the same step number collide on the coordination service's barriers.
  """
  options = ocp.CheckpointManagerOptions(
      preservation_policy=preservation_lib.LatestN(keep),
      cleanup_tmp_directories=True,
      enable_async_checkpointing=True,
      multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=name),
  )
  return ocp.CheckpointManager(directory, options=options, item_handlers=_handlers())


def _json_copy(meta):
  """A deep copy of `meta`, taken now: the JSON item is written after `save` returns."""
  return json.loads(json.dumps(meta or {}))


def _shapes(tree):
  """'/'-joined key path -> shape of every leaf of an array tree or its stored metadata."""
  return {'/'.join(path): tuple(leaf.shape) for path, leaf in ocp.tree.to_flat_dict(tree).items()}


def _mismatches(abstract_state, stored_state):
  """Human-readable differences in key paths and shapes; empty when the trees match."""
  want, have = _shapes(abstract_state), _shapes(stored_state)
  problems = [f'{k} is missing from the checkpoint' for k in sorted(want.keys() - have.keys())]
  problems += [f'{k} is in the checkpoint only' for k in sorted(have.keys() - want.keys())]
  problems += [
      f'{k} has shape {have[k]} in the checkpoint, {want[k]} in abstract_state'
      for k in sorted(want.keys() & have.keys()) if want[k] != have[k]
  ]
  return problems


def _with_checksums(manager, step, stored, **items):
  """{name: restored item} of `manager.restore(step)` of `items` and, when the step has them
  (`stored`: its item_metadata; not one saved before they existed), its checksums (else None)."""
  if _CHECKSUMS in stored:
    items[_CHECKSUMS] = ocp.args.JsonRestore()
  restored = manager.restore(step, args=ocp.args.Composite(**items))
  return {_CHECKSUMS: None} | {k: restored[k] for k in items}


def _newest_intact(steps, directory, restore_step):
  """(step, restore_step(step), {newer step: its error}) of the first of `steps` (newest
  first) that restores intact, each failure logged (CheckpointMismatchError, the caller's
  error, is raised); (None, None, {}) without steps.

  Raises:
    CheckpointRestoreError: none restored.
  """
  failures = {}
  for step in steps:
    try:
      return step, restore_step(step), failures
    except CheckpointMismatchError:
      raise
    except Exception as e:  # pylint: disable=broad-exception-caught
      failures[step] = e
      if step != steps[-1]:
        logging.warning('Checkpoint step %d in %s cannot be used, trying an older one: %s', step,
                        directory, _describe(e))
  if failures:
    raise _none_restored(directory, failures)
  return None, None, failures


def _none_restored(directory, failures):
  details = '; '.join(f'step {s}: {_describe(e)}' for s, e in failures.items())
  error = CheckpointRestoreError(
      f'no checkpoint in {directory} could be restored (tried steps {list(failures)}): '
      f'{details}. Move the directory away to start over.')
  error.details = details
  return error


class Checkpoints:
  """Latest-K training checkpoints with fallback on restore, plus the single best one."""

  def __init__(self, directory, keep=3):
    directory = epath.Path(directory).absolute()  # Orbax wants absolute paths
    self._directory = directory
    self._manager = _manager(directory, keep, 'checkpoints')
    self._best = _manager(epath.Path(directory) / _BEST_DIR, 1, _BEST_DIR)
    self._best_value = None  # read lazily from the best checkpoint's meta

  def latest_step(self):
    """The newest training checkpoint's step, None when there is none."""
    return self._manager.latest_step()

  def all_steps(self):
    """The steps of the kept training checkpoints, oldest first."""
    return list(self._manager.all_steps())

  def save(self, step, state, data_iterator=None, meta=None):
    """Starts an async save of `state`, the iterator position and `meta` at `step`, with their
    checksums (computed now, where the arrays are).

    Returns False when Orbax skipped it because `step` is not newer than the latest step.
    """
    meta = _json_copy(meta)
    items = {_STATE: ocp.args.StandardSave(state), _META: ocp.args.JsonSave(meta),
             _CHECKSUMS: ocp.args.JsonSave(_checksums(state, meta, data_iterator))}
    if data_iterator is not None:
      items[_DATA] = grain.checkpoint.CheckpointSave(data_iterator)
    return self._manager.save(int(step), args=ocp.args.Composite(**items))

  def restore(self, abstract_state, data_iterator=None):
    """Restores the newest intact checkpoint as `(step, state, meta)`; None when there is none.

    `abstract_state` is the state's tree of `jax.ShapeDtypeStruct`s with shardings; restored
    arrays get those shardings. `data_iterator` is set to the saved position in place.
    A checkpoint that fails to read, or reads back other content than was saved (checksums),
    is logged and the previous one tried; once one restores, the failed newer ones are deleted
    so that the resumed run can save those steps again.

    Raises:
      CheckpointMismatchError: `abstract_state` does not match a checkpoint's structure.
      CheckpointRestoreError: checkpoints exist but none could be restored intact.
    """
    _quiet_orphaned_loop_callbacks()
    step, restored, failures = _newest_intact(
        sorted(self._manager.all_steps(), reverse=True), self._directory,
        lambda step: self._restore_step(step, abstract_state, data_iterator))
    if step is None:
      return None
    self._delete_failed(failures)
    return step, *restored

  def _restore_step(self, step, abstract_state, data_iterator):
    """Checks `abstract_state` against the stored metadata, restores one step and verifies it."""
    stored = self._manager.item_metadata(step)
    self._check_compatible(step, stored, abstract_state)
    items = {_STATE: ocp.args.StandardRestore(abstract_state), _META: ocp.args.JsonRestore()}
    if data_iterator is not None:
      items[_DATA] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = _with_checksums(self._manager, step, stored, **items)
    _verify(f'checkpoint step {step} in {self._directory}', restored[_CHECKSUMS],
            restored[_STATE], restored[_META], data_iterator)
    return restored[_STATE], restored[_META]

  def _check_compatible(self, step, stored, abstract_state):
    """Raises CheckpointMismatchError naming `step` and the differences."""
    if stored[_STATE] is None:  # metadata unreadable: let the restore itself decide
      return
    problems = _mismatches(abstract_state, stored[_STATE])
    if problems:
      raise CheckpointMismatchError(
          f'abstract_state does not match checkpoint step {step} in {self._directory}: '
          + '; '.join(problems))

  def _delete_failed(self, failures):
    """Deletes steps newer than the restored one that failed (Orbax saves no older step)."""
    for step in failures:
      logging.warning('Deleting damaged checkpoint step %d in %s.', step, self._directory)
      self._manager.delete(step)

  def best_value(self):
    """The lowest value passed to a successful `save_best`, inf when there is none yet (or the
    best checkpoint's meta is damaged: the next `save_best` replaces it)."""
    if self._best_value is None:
      step, self._best_value = self._best.latest_step(), math.inf
      if step is not None:
        try:
          self._best_value = self._best_meta(step)[_BEST_VALUE]
        except Exception as e:  # pylint: disable=broad-exception-caught
          logging.warning('The best checkpoint in %s cannot be used, the next new best replaces '
                          'it: %s', self._best.directory, _describe(e))
    return self._best_value

  def best_step(self):
    """The training step of the best checkpoint, None when there is none."""
    index = self._best.latest_step()
    return None if index is None else self._best_meta(index)[_BEST_STEP]

  def _best_meta(self, step):
    """The meta item alone of the best checkpoint stored under Orbax step `step`, verified."""
    _quiet_orphaned_loop_callbacks()
    restored = _with_checksums(self._best, step, self._best.item_metadata(step),
                               **{_META: ocp.args.JsonRestore()})
    _verify(f'the best checkpoint in {self._best.directory}', restored[_CHECKSUMS], {},
            restored[_META])
    return restored[_META]

  def save_best(self, step, state, meta, value):
    """Saves `state` and `meta` as the best checkpoint if `value` is the lowest so far.

    `value` must be the same on every process. Returns True when it was a new best.
    """
    value = float(value)
    if not value < self.best_value():  # also rejects NaN
      return False
    meta = {**_json_copy(meta), _BEST_STEP: int(step), _BEST_VALUE: value}
    index = max(int(step), (self._best.latest_step() or 0) + 1)
    self._best.save(index, args=ocp.args.Composite(**{
        _STATE: ocp.args.StandardSave(state), _META: ocp.args.JsonSave(meta),
        _CHECKSUMS: ocp.args.JsonSave(_checksums(state, meta, None))}))
    self._best_value = value
    return True

  def restore_best(self, abstract_state):
    """Restores the best checkpoint as `(step, state, meta)`; None when there is none.

    Raises:
      CheckpointRestoreError: it cannot be read or reads back damaged (checksums).
    """
    _quiet_orphaned_loop_callbacks()
    index = self._best.latest_step()
    if index is None:
      return None
    try:
      restored = _with_checksums(self._best, index, self._best.item_metadata(index), **{
          _STATE: ocp.args.StandardRestore(abstract_state), _META: ocp.args.JsonRestore()})
      _verify(f'the best checkpoint in {self._best.directory}', restored[_CHECKSUMS],
              restored[_STATE], restored[_META])
    except Exception as e:  # pylint: disable=broad-exception-caught
      raise CheckpointRestoreError(f'the best checkpoint in {self._best.directory} cannot be '
                                   f'used: {_describe(e)}') from e
    return restored[_META][_BEST_STEP], restored[_STATE], restored[_META]

  def wait(self):
    """Blocks until every pending async save has been written."""
    self._manager.wait_until_finished()
    self._best.wait_until_finished()

  def close(self):
    """Waits for pending saves and releases the managers' resources."""
    self._manager.close()
    self._best.close()


def restore_part(directory, key, abstract_part, *, best=False):
  """`(step, the stored state's part `key`)` of the best or the newest intact checkpoint in
  `directory` (a `Checkpoints` directory); None when there is none. Only that part is read
  (e.g. a model without its optimizer state) and verified against its checksums, and nothing
  is written. A newer checkpoint that cannot be read or reads back damaged is reported and
  skipped, not deleted; so is a damaged best checkpoint: the newest intact training checkpoint
  is used in its place, with a warning.

  Raises:
    CheckpointMismatchError: `abstract_part` does not match a checkpoint's part.
    CheckpointRestoreError: checkpoints exist but none could be restored intact.
  """
  _quiet_orphaned_loop_callbacks()
  directory = epath.Path(directory).absolute()  # Orbax wants absolute paths
  if not best:
    return _restore_part_from(directory, str(key), abstract_part)
  try:
    return _restore_part_from(directory / _BEST_DIR, str(key), abstract_part, newest=True)
  except CheckpointRestoreError as e:
    latest = _restore_part_from(directory, str(key), abstract_part)
    if latest is None:
      raise
    logging.warning('The best checkpoint in %s cannot be used (%s); using the newest intact '
                    'training checkpoint, step %d, in its place', directory / _BEST_DIR,
                    e.details, latest[0])
    return latest


def _restore_part_from(directory, key, abstract_part, newest=False):
  """`restore_part` from one Orbax directory: its newest readable step (`newest`: the newest
  step or nothing)."""
  reader = ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(create=False),
      item_handlers=_handlers(ocp.PyTreeCheckpointHandler()))
  item = {key: abstract_part}

  def restore_step(step):
    stored = reader.item_metadata(step)
    if stored[_STATE] is not None:
      problems = _mismatches(abstract_part, stored[_STATE][key])
      if problems:
        raise CheckpointMismatchError(
            f'the model does not match checkpoint step {step} in {directory}: '
            + '; '.join(problems))
    restored = _with_checksums(reader, step, stored, **{
        _STATE: ocp.args.PyTreeRestore(
            item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
            partial_restore=True),
        _META: ocp.args.JsonRestore()})
    _verify(f'checkpoint step {step} in {directory}', restored[_CHECKSUMS],
            {key: restored[_STATE][key]})
    return restored[_META].get(_BEST_STEP, step), restored[_STATE][key]

  try:
    steps = sorted(reader.all_steps(), reverse=True)[:1 if newest else None]
    return _newest_intact(steps, directory, restore_step)[1]
  finally:
    reader.close()
