"""convssl-jax entry point: `python run.py --config=configs/vap.py[:variant] --mode=...`.

Modes:
  train     (default) build the corpus on first use, train in --workdir (resuming from its latest
            checkpoint), write the validation and test losses to workdir/metrics.json, then
            evaluate (as --mode=eval) and print the turn-taking table.
  eval      score the trained model (config.eval.checkpoint: best or latest) on turn-taking
            events, with the VA-only baseline (trained first if needed) and the trivial rules;
            writes workdir/eval/<split>/{metrics.json,table.md,*.png} and prints the tables.
  predict   per-frame curves of a trained model for --audio (a file or a folder; --va for a VA
            list): JSON, CSV and a PNG per file in --output.
  summary   build the configured model, run it on one second of audio, print shapes and
            parameter counts (total, trainable, per part).
  data      build the configured corpus if it is not built yet (the synthetic corpus builds
            itself; LDC corpora need --config.data.manual_dir) and print its splits.
  pretrain  CPC pretraining (configs/cpc_pretrain.py): train in --workdir, then export the
            encoder to workdir/encoder for --config.model.encoder_checkpoint.
  units     (configs/ulm.py) encoder features -> k-means codebook -> a units dataset with the
            aligned VA in --config.data.units_dir, for training the unit LM.
"""

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', 'configs/vap.py', 'Config file[:variant,...].',
                                lock_config=True)
flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'predict', 'summary', 'data', 'pretrain',
                                     'units'],
                  'What to run.')
flags.DEFINE_string('workdir', 'workdir', 'Checkpoints, TensorBoard events and metrics go here.')
flags.DEFINE_string('audio', None, 'predict: an audio file (stereo: one speaker per channel; mono: '
                    'speaker A) or a folder of them.')
flags.DEFINE_string('va', None, 'predict: a JSON VA list ([[[start, end], ...] of A, [...] of B]) '
                    'for --audio (one file); needed by the mono model.')
flags.DEFINE_string('output', None, 'predict: where the JSON, CSV and PNG go (default '
                    'WORKDIR/predictions).')
flags.DEFINE_string('compilation_cache', '~/.cache/convssl_jax/xla',
                    'Persistent XLA compilation cache (reruns and resumes skip compiling); '
                    "'' turns it off. $JAX_COMPILATION_CACHE_DIR, when set, wins.")
flags.DEFINE_string('coordinator_address', None, 'Multi-process runs without a cluster manager: '
                    'host:port of process 0 (with --num_processes and --process_id).')
flags.DEFINE_integer('num_processes', None, 'Number of processes (with --coordinator_address).')
flags.DEFINE_integer('process_id', None, 'This process (with --coordinator_address).')


def summary(config) -> None:
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from convssl_jax import models

  cfg = config.model
  model = models.build_model(cfg, rngs=nnx.Rngs(config.seed))
  model.eval()
  sample_rate = 16_000
  wave = jnp.zeros((1, 2, sample_rate), jnp.float32)
  if cfg.kind == 'mono':
    frames = cfg.frame_hz
    out = model(wave, jnp.zeros((1, frames, 2)), jnp.zeros((1, frames, cfg.va_cond.history_bins)))
  else:
    out = model(wave)
  print(f'model: {cfg.kind}, {cfg.frame_hz} Hz, head {cfg.vap.head}, dtype {cfg.dtype}')
  for name, value in jax.tree_util.tree_flatten_with_path(out)[0]:
    print(f'  output {jax.tree_util.keystr(name)}: {value.shape} {value.dtype} (1 s of audio)')
  trainable = models.trainable_filter(cfg)
  print(f'  parameters: {models.count_params(model):,} total, '
        f'{models.count_params(model, trainable):,} trainable')
  for name, part in vars(model).items():
    if isinstance(part, nnx.Module):
      print(f'    {name}: {models.count_params(part):,}')


def data(config) -> None:
  import data_builders
  from convssl_jax.data import pipeline

  builders = data_builders.prepare(config.data)
  for builder in builders:
    print(f'{builder.name}: {builder.data_dir}')
    for split, bad in builder.info.metadata.get('skipped', {}).items():
      for entry in bad:
        print(f'  skipped ({split}) {entry["session"]}: {entry["error"]}')
  for split in builders[0].info.splits:
    corpus = pipeline.Corpus.from_builders(builders, split)
    windows = pipeline.window_table(corpus, config.data.window_s, config.data.overlap_s,
                                    cover=split != 'train')
    print(f'  {split}: {len(corpus.sessions)} conversations, '
          f'{corpus.durations.sum() / 3600:.2f} h, {len(windows)} windows of '
          f'{config.data.window_s:g} s')


def train(config) -> None:
  import json

  from convssl_jax import train as train_lib

  results = train_lib.train_and_evaluate(config, FLAGS.workdir)
  print(json.dumps(results, indent=2))
  if 'preempted_at_step' not in results:
    evaluate(config)


def evaluate(config) -> None:
  import pathlib

  import jax

  from configs import vap
  from convssl_jax import evaluate as evaluate_lib
  from convssl_jax import metrics
  from convssl_jax import train as train_lib

  workdir = pathlib.Path(FLAGS.workdir)
  baselines = {}
  if config.eval.va_only_baseline:
    va_only, va_only_dir = vap.va_only(config), workdir / 'va_only'
    train_lib.train_and_evaluate(va_only, va_only_dir)  # trains once; later calls only resume
    baselines['VA only'] = (va_only, va_only_dir)
  results = evaluate_lib.evaluate(config, workdir, baselines)
  if jax.process_index() == 0:
    for split in evaluate_lib.SPLITS:
      print(metrics.report_table(results[split], title=f'{split} split ({config.data.name})'))
    if baselines:
      test = results['test']
      audio, va = (test[m]['shift_hold']['f1_weighted'] for m in ('model', 'VA only'))
      print(f'S/H weighted F1 on test: model {audio:.3f}, VA only {va:.3f}: the audio adds '
            f'{audio - va:+.3f}')
    print(f'written to {workdir / "eval"}')


def predict(config) -> None:
  import pathlib

  from convssl_jax import evaluate as evaluate_lib
  from convssl_jax import predict as predict_lib

  if not FLAGS.audio:
    raise app.UsageError('--mode=predict needs --audio=FILE_OR_FOLDER')
  files = predict_lib.audio_files(FLAGS.audio)
  if FLAGS.va and len(files) > 1:
    raise app.UsageError('--va goes with a single --audio file')
  va_list = predict_lib.read_va_list(FLAGS.va) if FLAGS.va else None
  trainer, step = evaluate_lib.restore_trainer(config, FLAGS.workdir, config.eval.checkpoint)
  output = pathlib.Path(FLAGS.output or pathlib.Path(FLAGS.workdir) / 'predictions')
  print(f'model: {FLAGS.workdir} ({config.eval.checkpoint} checkpoint, step {step})')
  for path in files:
    result = predict_lib.predict_file(trainer, config, path, va_list)
    written = predict_lib.write(result, output, path.stem)
    events = predict_lib.event_list(result['events'], config.model.frame_hz)
    print(f'{path}: {len(result["va"])} frames, {len(events)} events -> '
          + ', '.join(map(str, written)))


def pretrain(config) -> None:
  import json

  from convssl_jax import pretrain as pretrain_lib

  print(json.dumps(pretrain_lib.pretrain(config, FLAGS.workdir), indent=2))


def units(config) -> None:
  from convssl_jax import units as units_lib

  print(units_lib.build_units(config))


def initialize_distributed() -> None:
  """jax.distributed for multi-process runs: explicit flags, or what TPU pods, SLURM and Open MPI
  put in the environment (jax detects those itself)."""
  import os

  import jax

  if FLAGS.coordinator_address:
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  elif any(v in os.environ for v in ('SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE', 'TPU_WORKER_ID',
                                     'CLOUD_TPU_TASK_ID', 'JAX_COORDINATOR_ADDRESS')):
    jax.distributed.initialize()


def use_compilation_cache() -> None:
  import os

  import jax

  if FLAGS.compilation_cache and not jax.config.jax_compilation_cache_dir:
    jax.config.update('jax_compilation_cache_dir', os.path.expanduser(FLAGS.compilation_cache))
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  use_compilation_cache()
  if FLAGS.mode in ('train', 'eval', 'pretrain', 'units'):
    initialize_distributed()
  modes = {'train': train, 'eval': evaluate, 'predict': predict, 'summary': summary, 'data': data,
           'pretrain': pretrain, 'units': units}
  modes[FLAGS.mode](FLAGS.config)


if __name__ == '__main__':
  app.run(main)
