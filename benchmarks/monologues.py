"""The monologue rule's effect on turn-taking: do monologues in training bias the dialogs' S/H?

  python benchmarks/monologues.py [--steps=300] [--monologues=16] [--workdir=/tmp/monologues]

Three runs of the same small stereo model (the `tiny` sizes, 5 s windows, batch 8), same seed and
length, on the synthetic corpus: its dialogs only; its dialogs plus as many generated monologues
(speaker A alone, B silent, `data.synthetic.monologues`) under the rule (no VAP term, no VAD term
for the silent partner); and the same corpus with the rule switched off, every monologue counted
as a dialog (what training did before). Each is then scored on the test dialogs' shift/hold
events (both speaker orders): P(shift) at shift and at hold frames, the share of frames predicted
hold (P(shift) < 0.5), weighted F1 and balanced accuracy. A monologue's pauses are all holds, so
counting its windows teaches "the speaker goes on"; the rule keeps that out. Prints a table and
the JSON line (appended to benchmarks/RESULTS.md).
"""

import contextlib
import dataclasses
import pathlib
import sys
import time
from unittest import mock

import numpy as np
from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import results  # noqa: E402
from configs import vap  # noqa: E402
from convssl_jax import corpora, evaluate, metrics, train, trainer  # noqa: E402
from convssl_jax.data import pipeline  # noqa: E402

flags.DEFINE_integer('steps', 300, 'Training steps of each run.')
flags.DEFINE_integer('monologues', 16, 'Generated training monologues (as many as dialogs).')
flags.DEFINE_integer('seed', 0, 'The runs\' seed (config.seed).')
flags.DEFINE_string('workdir', '/tmp/monologues', 'Where the corpus and the runs go.')
FLAGS = flags.FLAGS
RUNS = ('dialogs only', 'with monologues (rule)', 'monologues as dialogs')


def config_for(workdir, steps: int, monologues: int, seed: int = 0):
  """The small stereo recipe on a synthetic corpus of 16 training dialogs of 30 s (4 validation,
  8 test) and `monologues` training monologues of 30 s."""
  config = vap.get_config('tiny')
  config.seed = seed
  config.data.data_dir = str(pathlib.Path(workdir) / 'data')
  config.data.synthetic.update(train=16, validation=4, test=8, duration_s=30.0,
                               monologues=monologues)
  config.data.batch_size = 8
  config.train.update(steps=steps, log_every=max(1, steps // 10), eval_every=steps,
                      checkpoint_every=steps)
  config.eval.update(during_training=False, va_only_baseline=False)
  return config


@contextlib.contextmanager
def monologues_as_dialogs():
  """The rule switched off: every conversation of a built corpus counted as a dialog."""
  read = pipeline.Corpus.from_builder.__func__

  def as_dialogs(cls, builder, split):
    return dataclasses.replace(read(cls, builder, split), monologue=None)

  with mock.patch.object(pipeline.Corpus, 'from_builder', classmethod(as_dialogs)):
    yield


def shift_hold(config, workdir) -> dict[str, float]:
  """The trained model's shift/hold frames on the test dialogs, both speaker orders."""
  model, _ = trainer.restore_model(config, workdir, 'latest')
  test = corpora.open_corpora(config, ('test',))['test'].dialogs()
  events = evaluate.Evaluation.for_config(config)
  samples = metrics.merge_samples([
      events.samples('test', swap, evaluate.predict_dialogs(model, config, test, swap))
      for swap in evaluate.ORDERS])
  scores, labels = samples['shift_hold']
  scored = metrics.score(samples)['shift_hold']  # at 0.5
  return {'p_shift_at_shifts': float(scores[labels == 1].mean()),
          'p_shift_at_holds': float(scores[labels == 0].mean()),
          'predicted_hold': float(np.mean(scores < 0.5)),
          'f1_weighted': float(scored['f1_weighted']),
          'balanced_accuracy': float(scored['balanced_accuracy']),
          'frames': int(len(labels))}


def run_all(workdir, steps: int, monologues: int, seed: int = 0) -> dict[str, dict]:
  """{run: its test S/H scores and its final losses}, trained in `workdir/<run>`."""
  workdir = pathlib.Path(workdir)
  out = {}
  for name in RUNS:
    config = config_for(workdir, steps, 0 if name == 'dialogs only' else monologues, seed)
    context = monologues_as_dialogs() if name == 'monologues as dialogs' else contextlib.nullcontext()
    directory = workdir / name.replace(' ', '_').replace('(', '').replace(')', '')
    started = time.perf_counter()
    with context:
      losses = train.train_and_evaluate(config, directory)
      out[name] = shift_hold(config, directory)
    out[name].update(vap_loss=losses['test']['vap_loss'], seconds=round(time.perf_counter() - started))
  return out


def table(scores: dict[str, dict]) -> str:
  lines = ['| run | P(shift) at shifts | P(shift) at holds | predicted hold | S/H F1w | S/H BAcc | '
           'test VAP loss |', '|---|---:|---:|---:|---:|---:|---:|']
  for name, s in scores.items():
    lines.append(f'| {name} | {s["p_shift_at_shifts"]:.3f} | {s["p_shift_at_holds"]:.3f} | '
                 f'{s["predicted_hold"]:.3f} | {s["f1_weighted"]:.3f} | '
                 f'{s["balanced_accuracy"]:.3f} | {s["vap_loss"]:.3f} |')
  return '\n'.join(lines)


def main(_):
  scores = run_all(FLAGS.workdir, FLAGS.steps, FLAGS.monologues, FLAGS.seed)
  print(table(scores))
  results.record('monologues', {'benchmark': 'monologues', 'steps': FLAGS.steps,
                                'monologues': FLAGS.monologues, 'seed': FLAGS.seed,
                                'runs': scores}, ('jax', 'flax'))


if __name__ == '__main__':
  app.run(main)
