"""Damage to a checkpoint that Orbax reads back without an error, for the tests of checksums.

Orbax's zstd stores what it cannot compress (trained float weights, mostly) raw and unchecked:
a flipped bit there reads back as another number. The tiny test models' arrays are
compressible, and a random flip in a compressed block usually breaks its decoding (a failure
the restore already handled), so the damage is written with Orbax itself: the same checkpoint
with one bit of one array flipped.
"""

import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp


def flip_a_stored_bit(step_dir, abstract, part=None, bit=20):
  """Rewrites the 'state' item of the checkpoint in `step_dir` (a composite step directory)
  with one bit flipped in its largest array (of the subtree `part` when given); `abstract` is
  the state's tree of ShapeDtypeStructs."""
  writer = ocp.StandardCheckpointer()
  state = writer.restore(step_dir / 'state', abstract)
  target = state if part is None else state[part]
  leaves, treedef = jax.tree.flatten(target)
  largest = max(range(len(leaves)), key=lambda i: leaves[i].size)
  values = np.array(leaves[largest])
  values.reshape(-1).view(np.uint32)[7] ^= np.uint32(1 << bit)
  leaves[largest] = values
  if part is None:
    state = jax.tree.unflatten(treedef, leaves)
  else:
    state[part] = jax.tree.unflatten(treedef, leaves)
  shutil.rmtree(step_dir / 'state')
  writer.save(step_dir / 'state', state)
  writer.wait_until_finished()
