"""The embedded default corpus as a TFDS builder: generated stereo dialogs, built on first use.

Each split's dialogs come from fixed seeds, so every machine builds the same corpus. The size is
the builder config: `SyntheticDialogsConfig(train=..., validation=..., test=..., duration_s=...)`;
the config name encodes it, so different sizes live side by side under the data directory.
`monologues` > 0 adds that many generated monologues (speaker A alone, B silent) to the train
split, after its dialogs; the validation and test splits are dialogs only.
"""

import dataclasses
import functools

import tensorflow_datasets as tfds

from data_builders import conversation
from data_builders.synthetic_dialogs import generator

SPLIT_SEEDS = {'train': 0, 'validation': 1_000_000, 'test': 2_000_000}
MONOLOGUE_SEED = 3_000_000  # the training monologues' seeds start here


@dataclasses.dataclass(kw_only=True)
class SyntheticDialogsConfig(tfds.core.BuilderConfig):
  """Number of dialogs per split, their length, and the training monologues added."""
  train: int = 96
  validation: int = 16
  test: int = 16
  duration_s: float = 60.0
  cue_reliability: float = 0.9
  monologues: int = 0

  @classmethod
  def sized(cls, train: int, validation: int, test: int, duration_s: float,
            cue_reliability: float = 0.9, monologues: int = 0) -> 'SyntheticDialogsConfig':
    name = (f'n{train}-{validation}-{test}_d{duration_s:g}_r{cue_reliability:g}'
            + (f'_m{monologues}' if monologues else ''))
    return cls(name=name, train=train, validation=validation, test=test, duration_s=duration_s,
               cue_reliability=cue_reliability, monologues=monologues)


def _session(split: str, index: int) -> str:
  return f'{split}_{index:05d}'


def _monologue_session(index: int) -> str:
  return f'train_monologue_{index:05d}'


def _example(split: str, index: int, config: SyntheticDialogsConfig,
             monologue: bool = False) -> dict:
  """Dialog (or training monologue) `index` of `split`, from its fixed seed."""
  seed = MONOLOGUE_SEED + index if monologue else SPLIT_SEEDS[split] + index
  dialog = generator.generate_dialog(seed, generator.DialogConfig(
      duration_s=config.duration_s, cue_reliability=config.cue_reliability, monologue=monologue))
  session = _monologue_session(index) if monologue else _session(split, index)
  return conversation.conversation(
      session=session, dataset='synthetic_dialogs', audio=dialog.audio,
      sample_rate=generator.DialogConfig.sample_rate, va=dialog.va_list, source=session,
      f0=dialog.f0, monologue=monologue)


class SyntheticDialogs(conversation.ConversationBuilder):
  """Procedural two-speaker dialogs with prosodic turn-end cues (see README.md beside this file)."""

  VERSION = tfds.core.Version('1.2.0')
  RELEASE_NOTES = {
      '1.2.0': 'each channel\'s noise floor varies per dialog, in level (-70 to -40 dBFS) and '
               'colour (white to red), instead of a constant -60 dBFS white noise.',
      '1.1.0': 'each conversation records whether it is a monologue (feature and metadata '
               '`monologue`); `monologues` adds generated monologues to the train split.',
      '1.0.0': 'Initial release.',
  }
  tracks_f0 = False  # F0 is the one the audio was synthesised at
  BUILDER_CONFIGS = [SyntheticDialogsConfig.sized(96, 16, 16, 60.0)]

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    config = self.builder_config
    return {split: self._generate_examples(split, [
        (_session(split, i), functools.partial(_example, split, i, config))
        for i in range(getattr(config, split))] + ([
        (_monologue_session(i), functools.partial(_example, split, i, config, True))
        for i in range(config.monologues)] if split == 'train' else []))
            for split in SPLIT_SEEDS}
