"""The synthetic corpus builder: stored conversations equal the generator's, pipeline reads them."""

import numpy as np

from convssl_jax.data import audio as audio_lib
from convssl_jax.data import pipeline
from data_builders import builder_class, conversation
from data_builders.synthetic_dialogs import SyntheticDialogsConfig, generator


def test_built_corpus_stores_the_generated_dialogs_and_feeds_the_pipeline(tmp_path):
  config = SyntheticDialogsConfig.sized(2, 1, 1, 8.0)
  builder = builder_class('synthetic_dialogs')(data_dir=str(tmp_path), config=config,
                                               num_workers=1)
  builder.download_and_prepare(download_config=conversation.download_config())
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {
      'train': 2, 'validation': 1, 'test': 1}
  assert builder.info.metadata['splits']['train'] == {
      'sessions': ['train_00000', 'train_00001'], 'durations': [8.0, 8.0],
      'monologue': [False, False]}

  stored = builder.as_data_source(split='validation')[0]
  dialog = generator.generate_dialog(1_000_000, generator.DialogConfig(duration_s=8.0))
  np.testing.assert_array_equal(stored['audio'], audio_lib.to_int16(dialog.audio))
  for got, want in zip(conversation.va_list(stored['va']), dialog.va_list):
    np.testing.assert_array_equal(np.reshape(got, (-1, 2)), np.reshape(want, (-1, 2)))
  np.testing.assert_array_equal(stored['f0'], dialog.f0)
  assert stored['session'] == b'validation_00000'

  corpus = pipeline.Corpus.from_builder(builder, 'train')
  spec = pipeline.WindowSpec(window_s=4.0, frame_hz=50, horizon_frames=100)
  batch = next(iter(pipeline.train_dataset(corpus, spec, batch_size=2, seed=0)))
  assert batch['audio'].shape == (2, 2, 64000) and batch['va'].shape == (2, 300, 2)


def test_the_configured_corpus_is_built_on_first_use_and_reused_after(tmp_path, capfd):
  import data_builders
  from configs import vap

  data = vap.get_config('tiny').data
  data.data_dir = str(tmp_path)
  data.synthetic.update(train=2, validation=1, test=1, duration_s=6.0)
  [first] = data_builders.prepare(data)
  # TFDS's banner for downloads ("Downloading and preparing dataset Unknown size ...") and its
  # "downloaded and prepared" are not printed for a local build.
  assert 'ownload' not in capfd.readouterr().out
  files = sorted(p.stat().st_mtime_ns for p in tmp_path.rglob('*.array_record*'))
  assert files and first.info.splits['train'].num_examples == 2
  [second] = data_builders.prepare(data)  # already built: nothing is written again
  assert sorted(p.stat().st_mtime_ns for p in tmp_path.rglob('*.array_record*')) == files
  assert second.data_dir == first.data_dir


def test_no_f0_tracker_recorded(tmp_path):
  """The dialogs' F0 is their synthesis's, not a tracker's."""
  builder = builder_class('synthetic_dialogs')(
      data_dir=str(tmp_path), config=SyntheticDialogsConfig.sized(1, 1, 1, 2.0), num_workers=1)
  builder.download_and_prepare(download_config=conversation.download_config())
  assert 'f0_tracker' not in builder.info.metadata


def test_training_monologues_are_added_after_the_dialogs_and_recorded_as_monologues(tmp_path):
  config = SyntheticDialogsConfig.sized(1, 1, 1, 8.0, monologues=2)
  assert config.name == 'n1-1-1_d8_r0.9_m2'
  builder = builder_class('synthetic_dialogs')(data_dir=str(tmp_path), config=config,
                                               num_workers=1)
  builder.download_and_prepare(download_config=conversation.download_config())
  splits = builder.info.metadata['splits']
  assert splits['train']['sessions'] == ['train_00000', 'train_monologue_00000',
                                         'train_monologue_00001']
  assert splits['train']['monologue'] == [False, True, True]
  assert splits['validation']['monologue'] == splits['test']['monologue'] == [False]
  source = builder.as_data_source(split='train')
  dialog = generator.generate_dialog(0, generator.DialogConfig(duration_s=8.0))
  np.testing.assert_array_equal(source[0]['audio'], audio_lib.to_int16(dialog.audio))
  assert not source[0]['monologue']
  for i in (1, 2):
    stored = source[i]
    assert stored['monologue'] and not stored['audio'][:, 1].any() and stored['audio'][:, 0].any()
    assert not np.any(stored['va'][:, 0] == 1) and np.any(stored['va'][:, 0] == 0)
  corpus = pipeline.Corpus.from_builder(builder, 'train')
  np.testing.assert_array_equal(corpus.monologue, [False, True, True])
  assert corpus.dialogs().sessions == ('train_00000',)
