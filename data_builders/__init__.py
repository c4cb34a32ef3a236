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
