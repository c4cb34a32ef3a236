"""The training run's checkpoint store: model/optimizer state, data iterator and metadata.

Every checkpoint is one Orbax composite step directory `<dir>/<step>/` with three items:

* 'state': any pytree of jax arrays (an `nnx.State` or a plain nested dict), `StandardSave`;
* 'data': the grain iterator position (one JSON file per process), only when an iterator is
  given, so a resumed run sees exactly the batches an uninterrupted run would have seen;
* 'meta': a JSON dict of the caller's bookkeeping (best loss, plateau counters, ...).

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
"""

import json
import math

from absl import logging
from etils import epath
import grain
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as preservation_lib

from convssl_jax import errors

_STATE, _DATA, _META = 'state', 'data', 'meta'
_BEST_DIR = 'best'
_BEST_STEP, _BEST_VALUE = 'best_step', 'best_value'  # keys added to the best checkpoint's meta


class CheckpointMismatchError(errors.UserError, ValueError):
  """The abstract state does not match a stored checkpoint's tree."""


class CheckpointRestoreError(RuntimeError):
  """No stored checkpoint could be read."""


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
  # Explicit handlers let `item_metadata` read a step before anything was saved or restored.
  handlers = {
      _STATE: ocp.StandardCheckpointHandler(),
      _DATA: grain.checkpoint.CheckpointHandler(),
      _META: ocp.JsonCheckpointHandler(),
  }
  return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


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
    """Starts an async save of `state`, the iterator position and `meta` at `step`.

    Returns False when Orbax skipped it because `step` is not newer than the latest step.
    """
    items = {_STATE: ocp.args.StandardSave(state), _META: ocp.args.JsonSave(_json_copy(meta))}
    if data_iterator is not None:
      items[_DATA] = grain.checkpoint.CheckpointSave(data_iterator)
    return self._manager.save(int(step), args=ocp.args.Composite(**items))

  def restore(self, abstract_state, data_iterator=None):
    """Restores the newest readable checkpoint as `(step, state, meta)`; None when there is none.

    `abstract_state` is the state's tree of `jax.ShapeDtypeStruct`s with shardings; restored
    arrays get those shardings. `data_iterator` is set to the saved position in place.
    A checkpoint that fails to read is logged and the previous one tried; once one restores,
    the unreadable newer ones are deleted so that the resumed run can save those steps again.

    Raises:
      CheckpointMismatchError: `abstract_state` does not match a checkpoint's structure.
      CheckpointRestoreError: checkpoints exist but none could be read.
    """
    failures = {}
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        state, meta = self._restore_step(step, abstract_state, data_iterator)
      except CheckpointMismatchError:
        raise
      except Exception as e:  # pylint: disable=broad-exception-caught
        logging.warning('Checkpoint step %d in %s could not be restored, trying an older one: '
                        '%s: %s', step, self._directory, type(e).__name__, e)
        failures[step] = e
        continue
      self._delete_unreadable(failures)
      return step, state, meta
    if failures:
      details = '; '.join(f'step {s}: {type(e).__name__}: {e}' for s, e in failures.items())
      raise CheckpointRestoreError(
          f'No checkpoint in {self._directory} could be restored (tried steps '
          f'{list(failures)}): {details}')
    return None

  def _restore_step(self, step, abstract_state, data_iterator):
    """Checks `abstract_state` against the stored metadata, then restores one step."""
    stored = self._manager.item_metadata(step)
    self._check_compatible(step, stored, abstract_state)
    items = {_STATE: ocp.args.StandardRestore(abstract_state), _META: ocp.args.JsonRestore()}
    if data_iterator is not None:
      items[_DATA] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
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

  def _delete_unreadable(self, failures):
    """Deletes steps newer than the restored one that failed to read (Orbax saves no older step)."""
    for step in failures:
      logging.warning('Deleting unreadable checkpoint step %d in %s.', step, self._directory)
      self._manager.delete(step)

  def best_value(self):
    """The lowest value passed to a successful `save_best`, inf when there is none yet."""
    if self._best_value is None:
      step = self._best.latest_step()
      self._best_value = math.inf if step is None else self._best_meta(step)[_BEST_VALUE]
    return self._best_value

  def best_step(self):
    """The training step of the best checkpoint, None when there is none."""
    index = self._best.latest_step()
    return None if index is None else self._best_meta(index)[_BEST_STEP]

  def _best_meta(self, step):
    """The meta item alone of the best checkpoint stored under Orbax step `step`."""
    return self._best.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))[_META]

  def save_best(self, step, state, meta, value):
    """Saves `state` and `meta` as the best checkpoint if `value` is the lowest so far.

    `value` must be the same on every process. Returns True when it was a new best.
    """
    value = float(value)
    if not value < self.best_value():  # also rejects NaN
      return False
    meta = {**_json_copy(meta), _BEST_STEP: int(step), _BEST_VALUE: value}
    index = max(int(step), (self._best.latest_step() or 0) + 1)
    self._best.save(index, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
    self._best_value = value
    return True

  def restore_best(self, abstract_state):
    """Restores the best checkpoint as `(step, state, meta)`; None when there is none."""
    index = self._best.latest_step()
    if index is None:
      return None
    restored = self._best.restore(index, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
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
  """`(step, the stored state's part `key`)` of the best or the newest readable checkpoint in
  `directory` (a `Checkpoints` directory; an unreadable newer one is reported and skipped, not
  deleted); None when there is none. Only that part is read, e.g. a model without its optimizer
  state, and nothing is written.

  Raises:
    CheckpointMismatchError: `abstract_part` does not match a checkpoint's part.
    CheckpointRestoreError: checkpoints exist but none could be read.
  """
  directory = epath.Path(directory).absolute() / (_BEST_DIR if best else '')  # Orbax: absolute
  key = str(key)  # as stored
  reader = ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(create=False),
      item_handlers={_STATE: ocp.PyTreeCheckpointHandler(), _META: ocp.JsonCheckpointHandler(),
                     _DATA: grain.checkpoint.CheckpointHandler()})
  try:
    steps = sorted(reader.all_steps(), reverse=True)[:1 if best else None]
    failures = {}
    for step in steps:
      stored = reader.item_metadata(step)[_STATE]
      if stored is not None:
        problems = _mismatches(abstract_part, stored[key])
        if problems:
          raise CheckpointMismatchError(
              f'the model does not match checkpoint step {step} in {directory}: '
              + '; '.join(problems))
      item = {key: abstract_part}
      try:
        restored = reader.restore(step, args=ocp.args.Composite(**{
            _STATE: ocp.args.PyTreeRestore(
                item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
                partial_restore=True),
            _META: ocp.args.JsonRestore()}))
      except Exception as e:  # pylint: disable=broad-exception-caught
        logging.warning('Checkpoint step %d in %s could not be restored, trying an older one: '
                        '%s: %s', step, directory, type(e).__name__, e)
        failures[step] = e
        continue
      return restored[_META].get(_BEST_STEP, step), restored[_STATE][key]
    if failures:
      details = '; '.join(f'step {s}: {type(e).__name__}: {e}' for s, e in failures.items())
      raise CheckpointRestoreError(f'No checkpoint in {directory} could be restored (tried '
                                   f'steps {list(failures)}): {details}')
    return None
  finally:
    reader.close()
