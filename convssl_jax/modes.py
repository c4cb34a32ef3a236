"""What each `run.py --mode` does: the library calls behind the command line, and what they print.

`run(config, options)` is the whole of a run after the flags are parsed: the config resolved
(--workdir's record where --config is not given) and checked before any work, the compilation
cache and the processes set up, the workdir locked for the modes that write into it, then the
mode. Each mode is a few lines over library functions a notebook can call directly
(`experiment.train`, `api.load`, `predict.predict_files`, ...).
"""

import contextlib
import dataclasses
import json
import os
import pathlib
import sys
from typing import Any

DISTRIBUTED_MODES = ('train', 'eval', 'cache_features', 'pretrain', 'units')
BATCHED_MODES = ('train', 'eval', 'predict', 'cache_features', 'pretrain')
# The modes that take --workdir's recorded config when --config is not given.
WORKDIR_MODES = ('train', 'eval', 'predict', 'stream', 'serve', 'export', 'cache_features',
                 'config')
LOCKING_MODES = ('train', 'eval', 'cache_features', 'pretrain')  # they write into --workdir


@dataclasses.dataclass(frozen=True)
class Options:
  """The command line's choices besides the config (run.py's flags of the same names)."""
  mode: str = 'train'
  workdir: str = 'workdir'
  config_given: bool = False  # --config was on the command line
  config_spec: str = 'configs/vap.py'  # its FILE[:ARG]
  overrides: dict[str, Any] = dataclasses.field(default_factory=dict)  # --config.a.b values
  audio: str | None = None
  va: str | None = None
  va_tiers: str = ''
  output: str | None = None
  model_dir: str | None = None
  pace: bool = True
  host: str = '127.0.0.1'
  port: int = 8000
  context_s: float | None = None
  export_platforms: tuple[str, ...] = ('cpu', 'cuda', 'tpu')
  compilation_cache: str = ''
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  distributed: str = 'auto'


def _load(config, o: Options):
  """(model, config, description) of --model_dir's converted model (data fields given on the
  command line win over its recipe's) or of --workdir's trained one."""
  from convssl_jax import trainer
  keep = {k[len('data.'):] for k in o.overrides if k.startswith('data.')}
  return trainer.load(config, workdir=o.workdir, model_dir=o.model_dir, keep_data=keep)


def _va_list(o: Options):
  from convssl_jax import predict
  from convssl_jax.data import textgrid
  return predict.read_va_list(o.va, tiers=textgrid.parse_tiers(o.va_tiers)) if o.va else None


def _report(config, results, o: Options) -> None:
  import jax

  from convssl_jax import experiment
  if results is not None and jax.process_index() == 0:
    print(experiment.report(config, results))
    print(f'written to {pathlib.Path(o.workdir) / "eval"}')


def train(config, o: Options) -> None:
  from convssl_jax import experiment
  results, evaluation = experiment.train(config, o.workdir)
  print(json.dumps(results, indent=2))
  _report(config, evaluation, o)


def evaluate(config, o: Options) -> None:
  from convssl_jax import experiment
  _report(config, experiment.evaluate(config, o.workdir), o)


def predict(config, o: Options) -> None:
  from convssl_jax import errors, predict as predict_lib
  from convssl_jax.data import textgrid
  if not o.audio:
    raise errors.UserError('--mode=predict needs --audio=FILE_OR_FOLDER')
  folder = pathlib.Path(o.audio).is_dir()
  if o.va and folder:
    raise errors.UserError('--va goes with a single --audio file; a folder\'s files are read '
                           'with the VA list or TextGrid beside each one (<name>.json, '
                           '<name>.TextGrid)')
  files = predict_lib.audio_files(o.audio)
  va_list = _va_list(o)
  model, config, source = _load(config, o)
  print(f'model: {source}')
  output = o.output or pathlib.Path(o.workdir) / 'predictions'
  predict_lib.predict_files(model, config, files, va_list, output, source=source, index=folder,
                            beside=folder, tiers=textgrid.parse_tiers(o.va_tiers))


def stream(config, o: Options) -> None:
  from convssl_jax import errors, live
  if not o.audio:
    raise errors.UserError('--mode=stream needs --audio=FILE, - (stdin PCM) or mic')
  va_list = _va_list(o)
  live.check_va(live.model_config(config, o.model_dir), va_list)  # before any weights
  model, config, source = _load(config, o)
  print(f'model: {source}', file=sys.stderr)
  live.stream(model, config, o.audio, va_list=va_list, context_s=o.context_s, pace=o.pace,
              output=o.output, source=source)


def serve(config, o: Options) -> None:
  from convssl_jax import serve as serve_lib
  serve_lib.require()  # aiohttp, before the model loads
  model, config, source = _load(config, o)
  print(f'model: {source}', file=sys.stderr)
  serve_lib.serve(model, config, audio=o.audio, output=o.output, host=o.host, port=o.port,
                  context_s=o.context_s, source=source)


def export(config, o: Options) -> None:
  from convssl_jax import export as export_lib
  model, config, source = _load(config, o)
  output = o.output or pathlib.Path(o.workdir) / 'export'
  written, skipped = export_lib.export_model(model, config, output, o.context_s,
                                             o.export_platforms)
  if skipped:
    print(f'the streaming step is not exported: {skipped}')
  print(f'model: {source} -> ' + ', '.join(map(str, written))
        + f' (for {", ".join(o.export_platforms)})')


def cache_features(config, o: Options) -> None:
  from convssl_jax import feature_cache
  directory = feature_cache.build(config, config.data.features
                                  or pathlib.Path(o.workdir) / 'features')
  print(f'feature cache: {directory}; train from it with --config.data.features={directory}')


def summary(config, o: Options) -> None:
  del o
  from convssl_jax import experiment
  print(experiment.summary(config))


def data(config, o: Options) -> None:
  del o
  from convssl_jax import corpora
  print('\n'.join(corpora.describe(config)))


def pretrain(config, o: Options) -> None:
  from convssl_jax import pretrain as pretrain_lib
  print(json.dumps(pretrain_lib.pretrain(config, o.workdir), indent=2))


def units(config, o: Options) -> None:
  del o
  from convssl_jax import units as units_lib
  print(units_lib.build_units(config))


def show_config(config, o: Options) -> None:
  from convssl_jax import config_fields
  if o.config_given or not _recorded(o):
    title, files = o.config_spec, [o.config_spec.split(':')[0]]
  else:
    title, files = f'{o.workdir}/config.json', config_fields.all_config_files()
  title += ''.join(f' --config.{k}={v}' for k, v in o.overrides.items())
  print(config_fields.describe(config, files, title))


MODES = {'train': train, 'eval': evaluate, 'predict': predict, 'stream': stream,
         'serve': serve, 'export': export, 'summary': summary, 'data': data,
         'cache_features': cache_features, 'pretrain': pretrain, 'units': units,
         'config': show_config}


def _recorded(o: Options) -> bool:
  from convssl_jax import workdir_config
  return (pathlib.Path(o.workdir) / workdir_config.CONFIG_FILE).is_file()


def resolved_config(config, o: Options):
  """`config` (--config's), or where --config is not given, the config --workdir recorded when
  it was trained (with the --config.a.b overrides); a --config given is checked against the
  record."""
  from convssl_jax import workdir_config
  if o.mode not in WORKDIR_MODES or o.model_dir:
    return config
  if o.mode == 'config' and o.config_given:
    return config  # shown as given
  resolved = workdir_config.resolve(o.workdir, config if o.config_given else None, o.overrides)
  return config if resolved is None else resolved


def setup(config, o: Options) -> None:
  """The compilation cache; Orbax's INFO lines (dozens per checkpoint on every process) dropped;
  the processes joined (for the modes that run on several)."""
  import logging

  import jax
  from absl import logging as absl_logging

  if o.compilation_cache and not jax.config.jax_compilation_cache_dir:
    jax.config.update('jax_compilation_cache_dir', os.path.expanduser(o.compilation_cache))
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)
  absl_logging.get_absl_handler().addFilter(
      lambda record: record.levelno >= logging.WARNING or '/orbax/' not in record.pathname)
  # JAX's "Unable to initialize backend 'tpu'/'proxy'" INFO lines on every CPU or GPU start.
  logging.getLogger('jax._src.xla_bridge').setLevel(logging.WARNING)
  if o.mode in DISTRIBUTED_MODES:
    from convssl_jax import parallelism
    parallelism.initialize_distributed(config.train.fsdp, o.coordinator_address, o.num_processes,
                                       o.process_id, o.distributed)


def run(config, o: Options) -> None:
  """A run of mode `o.mode` with --config's `config`: resolved, checked before any work, set up,
  the workdir locked where the mode writes into it."""
  from convssl_jax import config_check, workdir_lock
  config = resolved_config(config, o)
  if o.mode == 'config':
    show_config(config, o)
  config_check.check(config)  # before any work
  if o.mode == 'config':
    return
  setup(config, o)
  if o.mode in BATCHED_MODES:
    import jax
    config_check.check_devices(config, jax.device_count())
  with (workdir_lock.hold(o.workdir) if o.mode in LOCKING_MODES else contextlib.nullcontext()):
    MODES[o.mode](config, o)
