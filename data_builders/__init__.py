"""TFDS builders of the conversation corpora (array_record, no TensorFlow)."""

import importlib

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


def prepare(data):
  """The builder of the corpus configured in `data` (a config's `data` block), built first if it
  is not there yet: the synthetic corpus builds itself on first use; LDC corpora need
  `data.manual_dir`. Returns the builder, ready for `as_data_source`."""
  import tensorflow_datasets as tfds

  cls = builder_class(data.name)
  kwargs = dict(data_dir=data.data_dir or None, skip_bad=data.skip_bad)
  if data.name == 'synthetic_dialogs':
    from data_builders.synthetic_dialogs import SyntheticDialogsConfig

    s = data.synthetic
    config = SyntheticDialogsConfig.sized(s.train, s.validation, s.test, s.duration_s,
                                          s.cue_reliability)
    # TFDS takes a predefined config by name only.
    kwargs['config'] = config.name if config.name in cls.builder_configs else config
  elif data.builder_config:
    kwargs['config'] = data.builder_config
  builder = cls(**kwargs)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=data.manual_dir or None, try_download_gcs=False))
  return builder
