"""convssl-jax entry point: `python run.py --config=configs/vap.py[:variant] --mode=...`.

Modes:
  train     (default) build the corpus on first use, train in --workdir (resuming from its latest
            checkpoint), write the validation and test losses to workdir/metrics.json, then
            evaluate (as --mode=eval) and print the turn-taking table.
  eval      score the trained model (config.eval.checkpoint: best or latest) on turn-taking
            events, with the VA-only baseline (trained first if needed) and the trivial rules;
            writes workdir/eval/<split>/{metrics.json,table.md,*.png} and prints the tables.
  predict   per-frame curves of a trained model for --audio (a file or a folder; --va for a VA
            list): JSON, CSV, a PNG and an interactive HTML page per file in --output (a folder
            also gets index.html).
  stream    the trained model live (inference.Streamer, 20 ms hops): --audio=FILE paced in real
            time (--nopace: as fast as possible), --audio=- for raw 16-bit stereo PCM at 16 kHz
            on stdin, --audio=mic for a 2-channel input device (needs sounddevice); prints a
            live bar of who is likely to speak next and the push latency; --output also writes
            the frames as predict does. The mono model needs --va.
  export    the trained model as self-contained jax.export artifacts in --output (default
            WORKDIR/export): the streaming step (as --mode=stream runs it, --context_s) and the
            offline forward over one data.window_s window (convssl_jax/export.py).
  summary   build the configured model, run it on one second of audio, print shapes and
            parameter counts (total, trainable, per part).
  data      build the configured corpus if it is not built yet (the synthetic corpus builds
            itself; LDC corpora need --config.data.manual_dir) and print its splits.
  cache_features
            compute the frozen encoder's features of every training window once, into
            --config.data.features (default WORKDIR/features); then train with
            --config.data.features=THAT_DIR (same config: encoder frozen, data.jitter_grid_s > 0).
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
flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'predict', 'stream', 'export', 'summary',
                                    'data', 'cache_features', 'pretrain', 'units'],
                  'What to run.')
flags.DEFINE_string('workdir', 'workdir', 'Checkpoints, TensorBoard events and metrics go here.')
flags.DEFINE_string('audio', None, 'predict: an audio file (stereo: one speaker per channel; mono: '
                    'speaker A) or a folder of them. stream: a file, - (stdin PCM) or mic.')
flags.DEFINE_string('va', None, 'predict, stream: a VA list (JSON [[[start, end], ...] of A, [...] '
                    'of B], or a TextGrid with one interval tier per speaker) for --audio (one '
                    'file); needed by the mono model.')
flags.DEFINE_string('output', None, 'predict: where the JSON, CSV and PNG go (default '
                    'WORKDIR/predictions); stream: the same, written at the end, if given.')
flags.DEFINE_string('model_dir', None, 'predict, stream, export: a converted VAP model (python -m '
                    'checkpoints_convert vap|conv_ssl SRC DIR) in place of --workdir\'s trained one.')
flags.DEFINE_bool('pace', True, "stream: release a file's audio in real time.")
flags.DEFINE_float('context_s', None, 'stream: attention context in seconds (default: the '
                   "model's own, else data.window_s, the longest it was trained on).")
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
  from convssl_jax import viewer

  if not FLAGS.audio:
    raise app.UsageError('--mode=predict needs --audio=FILE_OR_FOLDER')
  files = predict_lib.audio_files(FLAGS.audio)
  if FLAGS.va and len(files) > 1:
    raise app.UsageError('--va goes with a single --audio file')
  va_list = predict_lib.read_va_list(FLAGS.va) if FLAGS.va else None
  trainer, config, source = _model(config)
  output = pathlib.Path(FLAGS.output or pathlib.Path(FLAGS.workdir) / 'predictions')
  print(f'model: {source}')
  m = config.model
  legend = {'model': f'{m.kind} VAP, {m.encoder.name} encoder, {m.vap.head} head, dim {m.dim}, '
                     f'{m.frame_hz} Hz', 'checkpoint': source}
  pages = []
  for path in files:
    predict_lib.notice_rate(path)
    result = predict_lib.predict_file(trainer, config, path, va_list)
    written = predict_lib.write(result, output, path.stem, audio=path,
                                legend={'file': path, **legend})
    pages.append(viewer.index_entry(written[-1], result))
    events = predict_lib.event_list(result['events'], config.model.frame_hz)
    print(f'{path}: {len(result["va"])} frames, {len(events)} events -> '
          + ', '.join(map(str, written)))
  if pathlib.Path(FLAGS.audio).is_dir():
    print(f'index: {viewer.write_index(pages, output / "index.html")}')


def _model(config):
  """(trainer, config, description) of --model_dir's converted model (its config.model in
  place of the configured one) or of --workdir's trained one (config.eval.checkpoint)."""
  from convssl_jax import evaluate as evaluate_lib

  if FLAGS.model_dir:
    given = config_flags.get_override_values(FLAGS['config'])
    trainer, config = evaluate_lib.converted_trainer(
        config, FLAGS.model_dir, keep_data={k[len('data.'):] for k in given if k.startswith('data.')})
    return trainer, config, f'{FLAGS.model_dir} (converted)'
  trainer, step = evaluate_lib.restore_trainer(config, FLAGS.workdir, config.eval.checkpoint)
  return trainer, config, f'{FLAGS.workdir} ({config.eval.checkpoint} checkpoint, step {step})'


def _streamer(model, objective, config):
  """The Streamer of a `_model`'s model, with --context_s of attention (default: the model's own
  context, else data.window_s, the longest it was trained on)."""
  from convssl_jax import inference

  frame_hz = config.model.frame_hz
  context = (int(FLAGS.context_s * frame_hz) if FLAGS.context_s
             else config.model.transformer.context or int(config.data.window_s * frame_hz))
  return inference.Streamer(model, objective, context=context)


def export(config) -> None:
  import pathlib

  from flax import nnx

  from convssl_jax import export as export_lib

  trainer, config, source = _model(config)
  output = pathlib.Path(FLAGS.output or pathlib.Path(FLAGS.workdir) / 'export')
  output.mkdir(parents=True, exist_ok=True)
  model, _ = nnx.merge(trainer.graphdef, trainer.state)
  written = [export_lib.export_forward(model, trainer.objective, output,
                                       window_s=config.data.window_s)]
  try:
    streamer = _streamer(model, trainer.objective, config)
  except ValueError as err:  # e.g. the encoder's 'reference' padding looks ahead
    print(f'the streaming step is not exported: {err}')
  else:
    written.append(export_lib.export_stream_step(streamer, output, config.model.frame_hz))
  print(f'model: {source} -> ' + ', '.join(map(str, written)))


def stream(config) -> None:
  import gc
  import pathlib
  import sys

  import numpy as np
  from flax import nnx

  from convssl_jax import live
  from convssl_jax import predict as predict_lib
  from convssl_jax.data import va as va_lib

  if not FLAGS.audio:
    raise app.UsageError('--mode=stream needs --audio=FILE, --audio=- (stdin PCM) or --audio=mic')
  if config.model.kind == 'mono' and not FLAGS.va:
    raise app.UsageError('the mono model reads the current voice activity: give --va')
  trainer, config, source = _model(config)
  model, _ = nnx.merge(trainer.graphdef, trainer.state)
  streamer = _streamer(model, trainer.objective, config)
  if streamer.mono and not FLAGS.va:  # a converted model's kind is known only now
    raise app.UsageError('the mono model reads the current voice activity: give --va')
  frame_hz = config.model.frame_hz
  va = None
  if FLAGS.va:
    va_list = predict_lib.read_va_list(FLAGS.va)
    end = max([seg[1] for channel in va_list for seg in channel], default=0.0)
    va = va_lib.va_frames(va_list, va_lib.num_frames(end, frame_hz) + 1, frame_hz)
  if FLAGS.audio == '-':
    blocks = live.pcm_source(sys.stdin.buffer)
  elif FLAGS.audio == 'mic':
    blocks = live.mic_source()
  else:
    predict_lib.notice_rate(FLAGS.audio)
    blocks = live.file_source(FLAGS.audio, pace=FLAGS.pace)
  print(f'model: {source}; {streamer.context / frame_hz:g} s of attention context',
        file=sys.stderr)
  gc.freeze()  # the startup's objects out of the collector's way: steadier push latency
  result = live.run(streamer, blocks, frame_hz, va=va)
  ms = result['latency_s'] * 1000
  if len(ms):
    print(f'{len(ms)} pushes: latency median {np.median(ms):.2f} ms, p99 '
          f'{np.percentile(ms, 99):.2f} ms', file=sys.stderr)
  if FLAGS.output and result['outputs']:
    outputs = result['outputs']
    frames = len(next(iter(outputs.values())))
    heard = np.zeros((frames, 2), np.float32) if va is None else va[:frames]
    live_input = FLAGS.audio in ('-', 'mic')
    stem = 'stream' if live_input else pathlib.Path(FLAGS.audio).stem
    written = predict_lib.write({'frame_hz': frame_hz, 'va': heard, 'events': {}, **outputs},
                                FLAGS.output, stem, audio=None if live_input else FLAGS.audio,
                                legend={'checkpoint': source, **({} if live_input else
                                                                 {'file': FLAGS.audio})})
    print('written: ' + ', '.join(map(str, written)), file=sys.stderr)


def cache_features(config) -> None:
  import pathlib

  from convssl_jax import feature_cache

  directory = config.data.features or pathlib.Path(FLAGS.workdir) / 'features'
  directory = feature_cache.build(config, directory)
  print(f'feature cache: {directory}; train from it with --config.data.features={directory}')


def pretrain(config) -> None:
  import json

  from convssl_jax import pretrain as pretrain_lib

  print(json.dumps(pretrain_lib.pretrain(config, FLAGS.workdir), indent=2))


def units(config) -> None:
  from convssl_jax import units as units_lib

  print(units_lib.build_units(config))


def initialize_distributed(config) -> None:
  """jax.distributed for multi-process runs: explicit flags, or what TPU pods, SLURM and Open MPI
  put in the environment (jax detects those itself); then the mesh's device groups connected."""
  import os

  import jax

  from convssl_jax import train as train_lib

  if FLAGS.coordinator_address:
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  elif any(v in os.environ for v in ('SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE', 'TPU_WORKER_ID',
                                     'CLOUD_TPU_TASK_ID', 'JAX_COORDINATOR_ADDRESS')):
    jax.distributed.initialize()
  else:
    return
  train_lib.connect_processes(config.train.fsdp)


def use_compilation_cache() -> None:
  import os

  import jax

  if FLAGS.compilation_cache and not jax.config.jax_compilation_cache_dir:
    jax.config.update('jax_compilation_cache_dir', os.path.expanduser(FLAGS.compilation_cache))
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)


def quiet_orbax() -> None:
  """Orbax logs dozens of INFO lines per checkpoint on every process; only its warnings and
  errors are kept."""
  import logging

  from absl import logging as absl_logging

  absl_logging.get_absl_handler().addFilter(
      lambda record: record.levelno >= logging.WARNING or '/orbax/' not in record.pathname)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  quiet_orbax()
  use_compilation_cache()
  if FLAGS.mode in ('train', 'eval', 'cache_features', 'pretrain', 'units'):
    initialize_distributed(FLAGS.config)
  modes = {'train': train, 'eval': evaluate, 'predict': predict, 'stream': stream,
           'export': export, 'summary': summary, 'data': data, 'cache_features': cache_features,
           'pretrain': pretrain, 'units': units}
  modes[FLAGS.mode](FLAGS.config)


if __name__ == '__main__':
  app.run(main)
