"""TFDS builders of the conversation corpora (array_record, no TensorFlow)."""

import importlib
import shlex

from convssl_jax import errors

CORPORA = ('synthetic_dialogs', 'switchboard', 'fisher', 'dialog_folder')


def builder_class(name: str) -> type:
  """The builder of corpus `name` (importing its package registers it with TFDS)."""
  from data_builders.conversation import ConversationBuilder

  if name not in CORPORA:
    raise ValueError(f'unknown corpus {name!r}; expected one of {", ".join(CORPORA)}')
  module = importlib.import_module(f'data_builders.{name}')
  return next(v for v in vars(module).values()
              if isinstance(v, type) and issubclass(v, ConversationBuilder)
              and v is not ConversationBuilder)


def beam_download_config(runner: str | None, options: str | None) -> dict:
  """DownloadConfig's `beam_runner` and `beam_options` for a build through Apache Beam, none when
  both are unset: `runner` a Beam runner's name (DirectRunner, DataflowRunner, FlinkRunner,
  SparkRunner, ...), `options` Beam's pipeline flags as one string."""
  if not runner and not options:
    return {}
  try:
    import apache_beam as beam  # optional: only Beam builds need it
  except ImportError:
    raise errors.ConfigError('--beam_runner/--beam_options need Apache Beam: pip install '
                             'apache-beam (see data_builders/README.md, "Beam builds")') from None
  return {'beam_runner': runner or None,
          'beam_options': beam.options.pipeline_options.PipelineOptions(shlex.split(options or ''))}


def corpus_names(data) -> list[str]:
  """The corpora of a config's `data` block: `data.name` is one name or several joined by '+'
  (their splits are concatenated, e.g. 'switchboard+fisher')."""
  names = data.name.split('+')
  for name in names:
    builder_class(name)  # an unknown name is an error naming it
  if len(set(names)) != len(names):
    raise ValueError(f'data.name={data.name!r} names a corpus twice')
  return names


def _per_corpus(data, field: str, names: list[str]) -> list[str]:
  """`data.<field>` split on ',' into one value per corpus (one value for a single corpus)."""
  value = getattr(data, field)
  values = value.split(',') if len(names) > 1 else [value]
  if len(names) > 1 and value and len(values) != len(names):
    raise ValueError(f'data.{field}={value!r}: give one comma-separated value per corpus of '
                     f'data.name={data.name!r} ({len(names)}), or none')
  return values if value or len(names) == 1 else [''] * len(names)


def prepare(data) -> list:
  """The builders of the corpora configured in `data` (a config's `data` block), each built
  first if it is not there yet: the synthetic corpus builds itself on first use; LDC corpora need
  their `data.manual_dir` (comma-separated, one per corpus, when `data.name` joins several).
  A dialog_folder dataset whose folder changed since it was built is rebuilt (its builder checks
  a fingerprint of its inputs before TFDS would reuse it). `data.f0_tracker` tracks F0;
  `data.beam_runner` / `data.beam_options` build through Beam."""
  import tensorflow_datasets as tfds

  names = corpus_names(data)
  builders = []
  for name, manual_dir, builder_config in zip(names, _per_corpus(data, 'manual_dir', names),
                                              _per_corpus(data, 'builder_config', names)):
    cls = builder_class(name)
    kwargs = dict(data_dir=data.data_dir or None, skip_bad=data.skip_bad,
                  f0_tracker=data.f0_tracker)
    if name == 'synthetic_dialogs':
      from data_builders.synthetic_dialogs import SyntheticDialogsConfig

      s = data.synthetic
      config = SyntheticDialogsConfig.sized(s.train, s.validation, s.test, s.duration_s,
                                            s.cue_reliability, s.monologues)
      # TFDS takes a predefined config by name only.
      kwargs['config'] = config.name if config.name in cls.builder_configs else config
    elif builder_config:
      kwargs['config'] = builder_config
    if name == 'dialog_folder':
      kwargs['va_tiers'] = data.va_tiers
    builder = cls(**kwargs)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=manual_dir or None, try_download_gcs=False,
        **beam_download_config(data.beam_runner, data.beam_options)))
    builders.append(builder)
  return builders
