"""What a person watching a run sees: a training rate without spikes, the learning rate in
TensorBoard, the best checkpoint under its step, a progress bar over evaluation."""

import json
import re
import struct

import pytest
from tensorboardX.proto import event_pb2

from convssl_jax import corpora, evaluate, progress, trainer
from convssl_jax.data import pipeline


def test_the_rate_is_over_the_last_log_steps_not_the_last_interval():
  rate = progress.Rate(0, window=4, now=0.0)
  for second in range(1, 9):  # 10 steps a second
    assert rate.update(10 * second, now=float(second)) == pytest.approx(10.0)
  # The device catches up with 10 queued steps: logged 0.01 s after the previous log step. The
  # rate of that interval alone was 1000 steps/s; over the last 4: (90 - 50) / (8.01 - 5).
  assert rate.update(90, now=8.01) == pytest.approx(40 / 3.01)


def _scalars(directory) -> dict[str, list[tuple[int, float]]]:
  """TensorBoard event files (TFRecord framing: length, its CRC, the Event, its CRC) -> the scalar
  values by tag, as (step, value)."""
  out = {}
  for path in sorted(directory.glob('events.out.tfevents.*')):
    data, at = path.read_bytes(), 0
    while at < len(data):
      (length,) = struct.unpack('<Q', data[at:at + 8])
      event = event_pb2.Event.FromString(data[at + 12:at + 12 + length])
      at += 12 + length + 4
      for value in event.summary.value:
        out.setdefault(value.tag, []).append((event.step, value.simple_value))
  return out


def test_tensorboard_and_the_log_get_the_learning_rate(tiny_run):
  config, workdir = tiny_run  # 4 steps of the 'plateau' schedule, no warmup, logged at step 4
  assert config.train.schedule == 'plateau' and not config.train.warmup_steps
  want = config.train.learning_rate
  assert _scalars(workdir / 'tensorboard')['train/learning_rate'] == [(4, pytest.approx(want))]
  logged = [json.loads(line) for line in (workdir / 'train_log.jsonl').read_text().splitlines()]
  assert [(e['step'], e['learning_rate']) for e in logged] == [(4, pytest.approx(want))]


def test_the_best_checkpoint_is_stored_under_its_training_step(tiny_run):
  _, workdir = tiny_run  # validated (and best) at step 4
  assert [p.name for p in (workdir / 'checkpoints' / 'best').iterdir() if p.name.isdigit()] == ['4']


def test_evaluation_shows_a_progress_bar_over_its_batches(tiny_run, capsys):
  config, workdir = tiny_run
  model, _ = trainer.restore_model(config, workdir, 'best')
  corpus = corpora.open_corpora(config, ('validation',))['validation']
  spec = corpora.window_spec(config, model.objective)
  batches = len(list(pipeline.eval_dataset(corpus, spec, batch_size=config.data.batch_size,
                                           overlap_s=config.eval.context_s)))
  assert batches > 1
  evaluate.predict_dialogs(model, config, corpus, desc='model validation')
  err = capsys.readouterr().err
  assert re.search(rf'model validation: +\d+%\|[^|]*\| +\d+/{batches} ', err), err[-500:]
