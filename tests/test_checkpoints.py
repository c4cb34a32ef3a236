"""The checkpoint store: nnx round trip, shardings, keep-K, fallback, best, grain resume, meta."""

import logging
import pathlib
import textwrap

from flax import nnx
import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from convssl_jax import checkpoints
from tests import processes

# When a restore fails, Orbax closes its event loop while sibling tensorstore reads are still in
# flight; their late completion callbacks hit the closed loop ("Event loop is closed").
pytestmark = pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')



@pytest.fixture
def directory(tmp_path):
  return tmp_path / 'checkpoints'


@pytest.fixture
def store(directory):
  ckpt = checkpoints.Checkpoints(directory, keep=3)
  yield ckpt
  ckpt.close()


def _model_and_optimizer(seed):
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(seed))
  return model, nnx.Optimizer(model, optax.adamw(1e-3), wrt=nnx.Param)


def _train_step(model, optimizer):
  """One deterministic adamw update; returns the loss before it."""
  x = jnp.arange(12, dtype=jnp.float32).reshape(4, 3) / 10

  def loss_fn(m):
    return jnp.mean((m(x) - 1.0) ** 2)

  loss, grads = nnx.value_and_grad(loss_fn)(model)
  optimizer.update(model, grads)
  return loss


def _abstract(tree):
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def _assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _small_state(value):
  return {'w': jnp.full((2, 3), value, jnp.float32),
          'opt': {'count': jnp.asarray(value, jnp.int32)}}


def _state_dir(directory, step):
  return pathlib.Path(directory) / str(step) / 'state'


def test_nnx_state_round_trip_resumes_training_identically(store):
  model, optimizer = _model_and_optimizer(0)
  _train_step(model, optimizer)
  store.save(1, nnx.state((model, optimizer)))
  store.wait()

  model2, optimizer2 = _model_and_optimizer(1)  # different init, overwritten by the restore
  step, state, meta = store.restore(_abstract(nnx.state((model2, optimizer2))))
  nnx.update((model2, optimizer2), state)

  assert (step, meta) == (1, {})
  _assert_trees_equal(nnx.state((model, optimizer)), nnx.state((model2, optimizer2)))
  np.testing.assert_array_equal(_train_step(model, optimizer), _train_step(model2, optimizer2))
  _assert_trees_equal(nnx.state((model, optimizer)), nnx.state((model2, optimizer2)))


def test_pure_dict_round_trip_into_fresh_nnx_objects(store):
  model, optimizer = _model_and_optimizer(0)
  _train_step(model, optimizer)
  store.save(1, nnx.to_pure_dict(nnx.state((model, optimizer))))
  store.wait()

  model2, optimizer2 = _model_and_optimizer(1)
  fresh = nnx.state((model2, optimizer2))
  _, pure, _ = store.restore(_abstract(nnx.to_pure_dict(fresh)))
  nnx.replace_by_pure_dict(fresh, pure)
  nnx.update((model2, optimizer2), fresh)

  _assert_trees_equal(nnx.state((model, optimizer)), nnx.state((model2, optimizer2)))


def test_restored_arrays_take_the_abstract_shardings(store):
  mesh = jax.make_mesh((1,), ('data',))
  sharding = jax.sharding.NamedSharding(mesh, jax.P('data'))
  store.save(1, {'w': jnp.arange(4.0)})
  store.wait()

  abstract = {'w': jax.ShapeDtypeStruct((4,), jnp.float32, sharding=sharding)}
  _, state, _ = store.restore(abstract)

  assert state['w'].sharding == sharding
  np.testing.assert_array_equal(state['w'], np.arange(4.0))


_RESHARD_SCRIPT = textwrap.dedent("""
    import sys
    import jax, jax.numpy as jnp, numpy as np
    from convssl_jax import checkpoints
    assert jax.device_count() == 4
    mesh = jax.make_mesh((4,), ('data',))
    replicated = jax.sharding.NamedSharding(mesh, jax.P())
    sharded = jax.sharding.NamedSharding(mesh, jax.P('data'))
    columns = jax.sharding.NamedSharding(mesh, jax.P(None, 'data'))
    ckpt = checkpoints.Checkpoints(sys.argv[1])
    m = np.arange(40.0, dtype=np.float32).reshape(5, 8)
    ckpt.save(1, {'w': jax.device_put(jnp.arange(8.0), replicated),
                  'm': jax.device_put(m, replicated)})
    ckpt.wait()
    # Restored sharded (by rows; by columns: each shard a strided part of the flat array), the
    # arrays verify against the digests of the replicated ones saved.
    _, state, _ = ckpt.restore({'w': jax.ShapeDtypeStruct((8,), jnp.float32, sharding=sharded),
                                'm': jax.ShapeDtypeStruct((5, 8), jnp.float32, sharding=columns)})
    assert state['w'].sharding == sharded, state['w'].sharding
    assert len(state['w'].addressable_shards) == 4
    np.testing.assert_array_equal(state['w'], np.arange(8.0))
    assert state['m'].sharding == columns
    np.testing.assert_array_equal(state['m'], m)
    ckpt.close()
""")


def test_replicated_save_restores_onto_four_device_sharding(tmp_path):
  result = processes.run('-c', _RESHARD_SCRIPT, str(tmp_path / 'ckpt'), timeout=120,
                         XLA_FLAGS='--xla_force_host_platform_device_count=4',
                         JAX_PLATFORMS='cpu')
  assert result.returncode == 0, result.stderr[-3000:]


_MULTI_PROCESS_SCRIPT = """
    import pathlib
    import grain, jax, jax.numpy as jnp, numpy as np
    from jax.experimental import multihost_utils
    from convssl_jax import checkpoints
    pid, directory = jax.process_index(), ARGS[0]
    sharding = jax.sharding.NamedSharding(jax.make_mesh((4,), ('data',)), jax.P('data'))
    state = {'w': jax.make_array_from_callback((8,), sharding, lambda i: np.arange(8.0)[i])}
    dataset = grain.MapDataset.range(40)[pid::2].to_iter_dataset()
    iterator = iter(dataset)
    ckpt = checkpoints.Checkpoints(directory)
    for step in (1, 2):
      next(iterator)
      ckpt.save(step, state, iterator, meta={'step': step})
      ckpt.save_best(step, state, {}, value=-step)  # same step numbers, concurrent async saves
    ckpt.wait()
    if pid == 0:
      (pathlib.Path(directory) / '2' / 'state' / 'manifest.ocdbt').unlink()
    multihost_utils.sync_global_devices('corrupted')
    fresh = iter(dataset)
    abstract = {'w': jax.ShapeDtypeStruct((8,), jnp.float32, sharding=sharding)}
    step, restored, meta = ckpt.restore(abstract, fresh)
    assert (step, meta, ckpt.all_steps(), ckpt.best_value()) == (1, {'step': 1}, [1], -2.0)
    assert restored['w'].sharding == sharding
    assert int(next(fresh)) == 2 + pid  # this process's second element
    ckpt.close()
"""


def test_two_process_run_saves_restores_and_falls_back(tmp_path):
  processes.run_script_together(_MULTI_PROCESS_SCRIPT, str(tmp_path / 'ckpt'))


def test_keeps_only_the_latest_k_checkpoints(tmp_path):
  ckpt = checkpoints.Checkpoints(tmp_path, keep=2)
  for step in (1, 2, 3, 4):
    ckpt.save(step, _small_state(step))
  ckpt.wait()
  assert (ckpt.all_steps(), ckpt.latest_step()) == ([3, 4], 4)
  ckpt.close()

  restarted = checkpoints.Checkpoints(tmp_path, keep=2)
  assert restarted.all_steps() == [3, 4]
  assert restarted.restore(_abstract(_small_state(0)))[0] == 4
  restarted.close()


def test_restore_returns_none_without_checkpoints(store):
  assert store.restore(_abstract(_small_state(0))) is None
  assert store.latest_step() is None


def test_meta_round_trips_and_is_captured_at_save_time(store):
  meta = {'best_val_loss': 2.3, 'plateau': {'count': 2, 'history': [3.0, 2.5]}, 'note': None}
  store.save(5, _small_state(5), meta=meta)
  meta['plateau']['count'] = 99  # the training loop keeps mutating its bookkeeping
  store.wait()

  _, _, restored = store.restore(_abstract(_small_state(0)))
  assert restored == {'best_val_loss': 2.3, 'plateau': {'count': 2, 'history': [3.0, 2.5]},
                      'note': None}


def _dataset():
  return grain.MapDataset.range(40).seed(7).shuffle().map(lambda x: x * 10).batch(2)


def _take(iterator, n):
  return [next(iterator).tolist() for _ in range(n)]


def test_resumed_iterator_continues_with_the_uninterrupted_batches(store):
  iterator = iter(_dataset().to_iter_dataset())
  _take(iterator, 3)
  store.save(3, _small_state(3), iterator)  # async: the position must be captured right now
  expected = _take(iterator, 3)
  store.wait()

  fresh = iter(_dataset().to_iter_dataset())
  step, _, _ = store.restore(_abstract(_small_state(0)), fresh)

  assert step == 3
  assert _take(fresh, 3) == expected


def test_restoring_an_iterator_from_a_checkpoint_without_one_fails(store):
  store.save(1, _small_state(1))
  store.wait()
  fresh = iter(_dataset().to_iter_dataset())
  with pytest.raises(checkpoints.CheckpointRestoreError, match='step 1: .*"data" was not found'):
    store.restore(_abstract(_small_state(0)), fresh)


def test_structure_mismatch_names_the_step_and_the_difference(store):
  store.save(7, _small_state(7))
  store.wait()

  wrong_keys = _abstract({'w': jnp.zeros((2, 3)), 'bias': jnp.zeros(2)})
  with pytest.raises(checkpoints.CheckpointMismatchError,
                     match=r'step 7.*bias is missing.*opt/count is in the checkpoint only'):
    store.restore(wrong_keys)
  wrong_shape = _abstract({'w': jnp.zeros((3, 3)), 'opt': {'count': jnp.zeros((), jnp.int32)}})
  with pytest.raises(checkpoints.CheckpointMismatchError, match=r'step 7.*w has shape \(2, 3\)'):
    store.restore(wrong_shape)
  assert store.all_steps() == [7]  # a mismatch is the caller's error: nothing is deleted


def _corrupt(directory, step):
  """Truncates every array data file of one step, as a crash mid-write on a plain FS would."""
  files = [p for p in _state_dir(directory, step).rglob('*')
           if p.is_file() and p.parent.name == 'd']
  assert files
  for path in files:
    path.write_bytes(path.read_bytes()[:5])


def test_corrupted_latest_falls_back_to_the_previous_checkpoint(store, directory, caplog):
  for step in (1, 2, 3):
    store.save(step, _small_state(step))
  store.wait()
  _corrupt(directory, 3)

  with caplog.at_level(logging.WARNING):
    step, state, _ = store.restore(_abstract(_small_state(0)))

  assert step == 2
  _assert_trees_equal(state, _small_state(2))
  assert any('step 3' in r.getMessage() and 'OUT_OF_RANGE' in r.getMessage()
             for r in caplog.records)


def test_after_fallback_the_run_can_save_the_lost_steps_again(store, directory):
  for step in (1, 2):
    store.save(step, _small_state(step))
  store.wait()
  (_state_dir(directory, 2) / 'manifest.ocdbt').unlink()

  assert store.restore(_abstract(_small_state(0)))[0] == 1
  assert store.all_steps() == [1]
  assert store.save(2, _small_state(20))
  store.wait()
  _, state, _ = store.restore(_abstract(_small_state(0)))
  _assert_trees_equal(state, _small_state(20))


def test_error_lists_every_step_tried_when_none_restores(store, directory):
  for step in (1, 2):
    store.save(step, _small_state(step))
  store.wait()
  for step in (1, 2):
    _corrupt(directory, step)

  with pytest.raises(checkpoints.CheckpointRestoreError, match=r'tried steps \[2, 1\]'):
    store.restore(_abstract(_small_state(0)))


def test_killed_save_leftovers_are_ignored(tmp_path):
  ckpt = checkpoints.Checkpoints(tmp_path)
  ckpt.save(1, _small_state(1))
  ckpt.wait()
  ckpt.close()
  tmp = tmp_path / '2.orbax-checkpoint-tmp-1234567' / 'state'  # a save killed before its rename
  tmp.mkdir(parents=True)
  (tmp / 'manifest.ocdbt').write_bytes(b'\0')
  half = tmp_path / '3' / 'state'  # a step directory without its commit markers
  half.mkdir(parents=True)

  ckpt = checkpoints.Checkpoints(tmp_path)
  assert 2 not in ckpt.all_steps()
  step, state, _ = ckpt.restore(_abstract(_small_state(0)))
  assert (step, ckpt.all_steps()) == (1, [1])  # the unreadable step 3 was dropped
  _assert_trees_equal(state, _small_state(1))
  ckpt.close()


def test_best_keeps_the_single_lowest_value_across_a_restart(tmp_path):
  ckpt = checkpoints.Checkpoints(tmp_path)
  assert ckpt.best_value() == float('inf')
  assert ckpt.save_best(10, _small_state(10), {'epoch': 1}, value=2.0)
  assert not ckpt.save_best(20, _small_state(20), {'epoch': 2}, value=3.0)
  assert ckpt.save_best(30, _small_state(30), {'epoch': 3}, value=np.float32(1.5))
  assert not ckpt.save_best(35, _small_state(35), {}, value=float('nan'))
  ckpt.close()

  restarted = checkpoints.Checkpoints(tmp_path)
  assert restarted.best_value() == 1.5
  assert not restarted.save_best(40, _small_state(40), {}, value=1.7)
  step, state, meta = restarted.restore_best(_abstract(_small_state(0)))
  assert (step, meta['epoch'], meta['best_value']) == (30, 3, 1.5)
  _assert_trees_equal(state, _small_state(30))
  # On disk under its training step (it was a counter: best/2 for the second best, at step 30).
  assert [p.name for p in (tmp_path / 'best').iterdir() if p.name.isdigit()] == ['30']
  assert restarted.all_steps() == []  # best checkpoints are not training checkpoints
  restarted.close()


def test_a_workdir_whose_best_was_numbered_by_a_counter_reads_and_goes_on(tmp_path):
  # As workdirs were written before: the best of training step 20, the second best, as best/2.
  old = ocp.CheckpointManager((tmp_path / 'best').absolute())
  old.save(2, args=ocp.args.Composite(
      state=ocp.args.StandardSave(_small_state(20)),
      meta=ocp.args.JsonSave({'best_step': 20, 'best_value': 1.5})))
  old.wait_until_finished()
  old.close()
  ckpt = checkpoints.Checkpoints(tmp_path)
  assert (ckpt.best_step(), ckpt.best_value()) == (20, 1.5)
  step, state = checkpoints.restore_part(tmp_path, 'w', _abstract(_small_state(0))['w'],
                                         best=True)  # as predict and eval read it
  assert step == 20
  _assert_trees_equal(state, _small_state(20)['w'])
  assert ckpt.save_best(30, _small_state(30), {}, value=1.0)
  ckpt.close()
  assert [p.name for p in (tmp_path / 'best').iterdir() if p.name.isdigit()] == ['30']


def test_new_best_after_resuming_from_an_older_step_is_kept(store):
  store.save_best(50, _small_state(50), {}, value=2.0)
  store.save_best(30, _small_state(30), {}, value=1.0)  # the run rewound to step 20, then improved
  store.wait()

  step, state, _ = store.restore_best(_abstract(_small_state(0)))
  assert (step, store.best_value()) == (30, 1.0)
  _assert_trees_equal(state, _small_state(30))
  # Orbax saves no step before the latest it holds: the next number, the step in the meta.
  assert [p.name for p in (store._directory / 'best').iterdir() if p.name.isdigit()] == ['51']


# Content checksums.

def _fmix64(x):
  """MurmurHash3's fmix64 on a Python int (the reference for the digest's numpy version)."""
  mask = 2 ** 64 - 1
  x ^= x >> 33
  x = (x * 0xFF51AFD7ED558CCD) & mask
  x ^= x >> 33
  x = (x * 0xC4CEB9FE1A85EC53) & mask
  return x ^ (x >> 33)


def _reference_digest(array):
  """The documented digest, element by element in Python: the sum mod 2**64 over the array's
  stored uint32 words (row-major; 8-byte elements are two, sub-word dtypes widened) of
  fmix64(i * 2**32 + word_i + 0x9E3779B97F4A7C15)."""
  array = np.asarray(array)
  if array.dtype == np.bool_:
    words = array.astype(np.uint32).ravel()
  elif array.dtype.itemsize >= 4:
    words = np.ascontiguousarray(array).view(np.uint32).ravel()
  else:
    words = array.view({1: np.uint8, 2: np.uint16}[array.dtype.itemsize]).astype(np.uint32).ravel()
  total = sum(_fmix64(((i << 32) + int(w) + 0x9E3779B97F4A7C15) & (2 ** 64 - 1))
              for i, w in enumerate(words))
  return f'{total % 2 ** 64:016x}'


def test_array_digests_follow_their_definition_for_every_stored_dtype():
  rng = np.random.default_rng(0)
  tree = {'f32': jnp.asarray(rng.normal(size=(3, 5)).astype(np.float32)),
          'bf16': jnp.asarray(rng.normal(size=(4,)), jnp.bfloat16),
          'i8': jnp.arange(-3, 4, dtype=jnp.int8), 'mask': jnp.array([[True, False, True]]),
          'count': jnp.asarray(7, jnp.int32), 'key': jax.random.key_data(jax.random.key(1)),
          'host_f64': rng.normal(size=(2, 3)), 'empty': jnp.zeros((0, 4))}
  digests = checkpoints._array_digests(tree)
  for name, leaf in tree.items():
    assert digests[name] == [str(leaf.dtype), list(leaf.shape), _reference_digest(leaf)], name


def test_any_changed_or_moved_element_changes_the_digest():
  x = np.random.default_rng(1).normal(size=(300, 7)).astype(np.float32)
  digest = lambda a: checkpoints._array_digests({'x': a})['x'][2]
  seen = {digest(x)}
  for flat, bit in ((0, 0), (1000, 31), (2099, 17)):  # single bit flips, the sign bit included
    flipped = x.copy().reshape(-1).view(np.uint32)
    flipped[flat] ^= np.uint32(1 << bit)
    seen.add(digest(flipped.view(np.float32).reshape(x.shape)))
  swapped = x.copy()
  swapped[[0, 1]] = swapped[[1, 0]]  # the same values in other places
  seen.add(digest(swapped))
  two_signs = x.copy()  # two sign flips: a plain sum of words mod 2**32 would not see them
  two_signs.reshape(-1)[[5, 9]] *= -1
  seen.add(digest(two_signs))
  assert len(seen) == 6


def _random_state(seed, n=4096):
  """Random float32 bits (finite): incompressible, so Orbax's zstd stores them raw and flipped
  bits read back silently."""
  w = np.random.default_rng(seed).integers(0, 2 ** 32, n, dtype=np.uint32).view(np.float32)
  return {'w': jnp.asarray(np.where(np.isfinite(w), w, 0)),
          'opt': {'count': jnp.asarray(seed, jnp.int32)}}


def _flip_in_file(directory, needle: bytes, offset=3):
  """Flips one bit of the first file under `directory` that holds `needle` (an array's raw
  bytes), inside it; returns that file."""
  for path in sorted(p for p in pathlib.Path(directory).rglob('*') if p.is_file()):
    data = bytearray(path.read_bytes())
    at = data.find(needle)
    if at >= 0:
      data[at + offset] ^= 0x10
      path.write_bytes(bytes(data))
      return path
  raise AssertionError(f'no file under {directory} holds the bytes')


def test_a_bit_flip_in_an_array_falls_back_to_the_previous_checkpoint(store, directory, caplog):
  for step in (1, 2, 3):
    store.save(step, _random_state(step))
  store.wait()
  _flip_in_file(_state_dir(directory, 3), np.asarray(_random_state(3)['w'])[1000:1004].tobytes())

  with caplog.at_level(logging.WARNING):
    step, state, _ = store.restore(_abstract(_random_state(0)))

  assert step == 2
  _assert_trees_equal(state, _random_state(2))
  assert any('step 3' in r.getMessage() and '1 of 2 arrays differ from what was saved (w)'
             in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]
  assert store.all_steps() == [1, 2]  # the damaged step is deleted: the run saves it again


def _rewrite(path, old, new):
  text = path.read_text()
  assert old in text, text
  path.write_text(text.replace(old, new))


def test_changed_meta_or_iterator_position_falls_back_to_the_previous_checkpoint(store, directory):
  iterator = iter(_dataset().to_iter_dataset())
  for step in (1, 2, 3):
    _take(iterator, 1)
    store.save(step, _small_state(step), iterator, meta={'best_val_loss': 2.5})
  store.wait()
  # Valid JSON with another value: what a flipped bit in a digit does.
  _rewrite(pathlib.Path(directory) / '3' / 'meta' / 'metadata', '2.5', '2.4')
  _rewrite(pathlib.Path(directory) / '2' / 'data' / 'process_0-of-1.json', '2', '7')

  fresh = iter(_dataset().to_iter_dataset())
  step, _, meta = store.restore(_abstract(_small_state(0)), fresh)
  assert (step, meta) == (1, {'best_val_loss': 2.5})
  assert _take(fresh, 1) == _take(iter(_dataset().to_iter_dataset()), 2)[1:]


def test_a_checkpoint_saved_before_checksums_restores_with_a_warning(directory, caplog):
  old = checkpoints._manager(directory, 3, 'old')  # the composite an older version wrote
  old.save(1, args=ocp.args.Composite(state=ocp.args.StandardSave(_small_state(1)),
                                      meta=ocp.args.JsonSave({'best_val_loss': 1.0})))
  old.wait_until_finished()
  old.close()
  ckpt = checkpoints.Checkpoints(directory)
  with caplog.at_level(logging.WARNING):
    step, state, meta = ckpt.restore(_abstract(_small_state(0)))
  ckpt.close()
  assert (step, meta) == (1, {'best_val_loss': 1.0})
  _assert_trees_equal(state, _small_state(1))
  assert any('has no checksums (saved by an older version): restored unverified'
             in r.getMessage() for r in caplog.records)


def test_a_damaged_best_is_refused_and_a_model_read_falls_back_to_the_latest(
    store, directory, caplog):
  store.save(4, _random_state(4))
  store.save_best(4, _random_state(4), {}, value=1.0)
  store.save(6, _random_state(6))
  store.wait()
  _flip_in_file(pathlib.Path(directory) / 'best',
                np.asarray(_random_state(4)['w'])[2000:2004].tobytes())
  abstract = _abstract(_random_state(0))

  with pytest.raises(checkpoints.CheckpointRestoreError,
                     match=r'the best checkpoint in .*best cannot be used: damaged, .*\(w\)'):
    store.restore_best(abstract)
  with caplog.at_level(logging.WARNING):
    step, part = checkpoints.restore_part(directory, 'w', abstract['w'], best=True)
  assert step == 6
  np.testing.assert_array_equal(part, _random_state(6)['w'])
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 1 and 'best' in warnings[0] and 'step 6, in its place' in warnings[0]
  assert '\n' not in warnings[0]


def test_a_damaged_best_meta_counts_as_no_best_and_is_replaced(tmp_path):
  ckpt = checkpoints.Checkpoints(tmp_path)
  ckpt.save_best(10, _small_state(10), {}, value=2.0)
  ckpt.close()
  _rewrite(tmp_path / 'best' / '10' / 'meta' / 'metadata', '2.0', '0.5')  # best/<its step>

  restarted = checkpoints.Checkpoints(tmp_path)
  assert restarted.best_value() == float('inf')  # not the 0.5 it now claims
  assert restarted.save_best(20, _small_state(20), {}, value=3.0)
  restarted.wait()
  step, state, _ = restarted.restore_best(_abstract(_small_state(0)))
  assert step == 20
  _assert_trees_equal(state, _small_state(20))
  restarted.close()


# A read completes after the asyncio loop that awaited it was closed, as the sibling reads of a
# failed Orbax restore do; then an unrelated unraisable error, which must still be reported.
_ORPHANED_CALLBACK_SCRIPT = textwrap.dedent("""
    import asyncio, sys
    import tensorstore as ts
    from convssl_jax import checkpoints
    if sys.argv[1] == 'quiet':
      checkpoints._quiet_orphaned_loop_callbacks()
    promise, future = ts.Promise.new()
    loop = asyncio.new_event_loop()

    async def read():
      return await future

    task = loop.create_task(read())
    loop.run_until_complete(asyncio.sleep(0.01))  # the read is in flight
    loop.close()
    promise.set_result(1)  # its completion callback finds the loop closed

    class Other:
      def __del__(self):
        raise ValueError('an unrelated error')

    Other()
""")


@pytest.mark.parametrize('mode', ['quiet', 'default'])
def test_callbacks_of_reads_left_in_flight_by_a_failed_restore_are_dropped(mode):
  result = processes.run('-c', _ORPHANED_CALLBACK_SCRIPT, mode, timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'ValueError: an unrelated error' in result.stderr
  assert ('Event loop is closed' in result.stderr) == (mode == 'default')
