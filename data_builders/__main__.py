"""Builds a corpus: `python -m data_builders NAME [--manual_dir=DIR] [--data_dir=DIR] [--config=C]`.

NAME is one of synthetic_dialogs, switchboard, fisher, dialog_folder. The dataset lands in
DATA_DIR/NAME/CONFIG/VERSION (DATA_DIR defaults to TFDS's, ~/tensorflow_datasets or
$TFDS_DATA_DIR). A build that fails can be re-run; what a killed one leaves behind is removed by
the next. Conversations load in a pool of processes, or through Apache Beam with `--beam_runner` /
`--beam_options` (data_builders/README.md, "Beam builds"). An input the build refuses is one
line on stderr naming the file, and exit status 2.
"""

import sys

import tensorflow_datasets as tfds
from absl import app, flags

from convssl_jax import errors
from convssl_jax.data import f0 as f0_lib
from data_builders import CORPORA, beam_download_config, builder_class

FLAGS = flags.FLAGS
flags.DEFINE_string('data_dir', None, 'Where datasets are written (TFDS default if unset).')
flags.DEFINE_string('manual_dir', None, 'The corpus as shipped (LDC tree, or your folder).')
flags.DEFINE_string('config', None, 'Builder config name (e.g. fold_3); the default if unset.')
flags.DEFINE_integer('num_workers', None, 'Processes loading conversations (default: all cores).')
flags.DEFINE_enum('f0_tracker', f0_lib.DEFAULT_TRACKER, f0_lib.TRACKERS,
                  "F0 tracker: pyin (this project's, fast) or librosa_pyin (librosa.pyin).")
flags.DEFINE_string('beam_runner', None, 'Build through Apache Beam with this runner '
                    '(DirectRunner, DataflowRunner, FlinkRunner, SparkRunner, ...).')
flags.DEFINE_string('beam_options', None, "Beam's pipeline flags as one string, e.g. "
                    "'--direct_running_mode=multi_processing --direct_num_workers=16'.")
flags.DEFINE_bool('skip_bad', False, 'Leave out conversations that fail to load and list them '
                  "in the dataset's metadata instead of stopping.")
flags.DEFINE_string('va_tiers', '', "dialog_folder: the TextGrid tiers of speakers A and B, "
                    "'A_TIER,B_TIER' ('A_TIER,' for a silent B); default: recognised in each file.")


def main(argv):
  if len(argv) != 2:
    raise app.UsageError(f'usage: python -m data_builders {{{",".join(CORPORA)}}} [flags]')
  if FLAGS.va_tiers and argv[1] != 'dialog_folder':
    raise app.UsageError('--va_tiers is an option of dialog_folder')
  options = {'va_tiers': FLAGS.va_tiers} if argv[1] == 'dialog_folder' else {}
  try:
    beam = beam_download_config(FLAGS.beam_runner, FLAGS.beam_options)
    builder = builder_class(argv[1])(data_dir=FLAGS.data_dir, config=FLAGS.config,
                                     skip_bad=FLAGS.skip_bad, num_workers=FLAGS.num_workers,
                                     f0_tracker=FLAGS.f0_tracker, **options)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=FLAGS.manual_dir, try_download_gcs=False, **beam))
  except errors.UserError as err:
    print(f'error: {err}', file=sys.stderr)
    sys.exit(2)
  print(f'{builder.name}: {builder.data_dir}')
  for split, info in builder.info.splits.items():
    print(f'  {split}: {info.num_examples} conversations, {info.num_bytes / 1e6:.1f} MB')
  for split, bad in builder.info.metadata.get('skipped', {}).items():
    for entry in bad:
      print(f'  skipped ({split}) {entry["session"]}: {entry["error"]}')


if __name__ == '__main__':
  app.run(main)
