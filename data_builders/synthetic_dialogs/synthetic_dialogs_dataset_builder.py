"""The embedded default corpus as a TFDS builder: generated stereo dialogs, built on first use.

Each split's dialogs come from fixed seeds, so every machine builds the same corpus. The size is
the builder config: `SyntheticDialogsConfig(train=..., validation=..., test=..., duration_s=...)`;
the config name encodes it, so different sizes live side by side under the data directory.
"""

import dataclasses
import functools

import tensorflow_datasets as tfds

from data_builders import conversation
from data_builders.synthetic_dialogs import generator

SPLIT_SEEDS = {'train': 0, 'validation': 1_000_000, 'test': 2_000_000}


@dataclasses.dataclass(kw_only=True)
class SyntheticDialogsConfig(tfds.core.BuilderConfig):
  """Number of dialogs per split and their length."""
  train: int = 96
  validation: int = 16
  test: int = 16
  duration_s: float = 60.0
  cue_reliability: float = 0.9

  @classmethod
  def sized(cls, train: int, validation: int, test: int, duration_s: float,
            cue_reliability: float = 0.9) -> 'SyntheticDialogsConfig':
    name = f'n{train}-{validation}-{test}_d{duration_s:g}_r{cue_reliability:g}'
    return cls(name=name, train=train, validation=validation, test=test, duration_s=duration_s,
               cue_reliability=cue_reliability)


def _session(split: str, index: int) -> str:
  return f'{split}_{index:05d}'


def _example(split: str, index: int, config: SyntheticDialogsConfig) -> dict:
  """Dialog `index` of `split`, from its fixed seed."""
  dialog = generator.generate_dialog(SPLIT_SEEDS[split] + index, generator.DialogConfig(
      duration_s=config.duration_s, cue_reliability=config.cue_reliability))
  session = _session(split, index)
  return conversation.conversation(
      session=session, dataset='synthetic_dialogs', audio=dialog.audio,
      sample_rate=generator.DialogConfig.sample_rate, va=dialog.va_list, source=session,
      f0=dialog.f0)


class SyntheticDialogs(conversation.ConversationBuilder):
  """Procedural two-speaker dialogs with prosodic turn-end cues (see README.md beside this file)."""

  VERSION = tfds.core.Version('1.0.0')
  tracks_f0 = False  # F0 is the one the audio was synthesised at
  BUILDER_CONFIGS = [SyntheticDialogsConfig.sized(96, 16, 16, 60.0)]

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {split: self._generate_examples(split, [
        (_session(split, i), functools.partial(_example, split, i, self.builder_config))
        for i in range(getattr(self.builder_config, split))]) for split in SPLIT_SEEDS}
