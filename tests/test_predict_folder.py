"""Predict over a folder as a user runs it: outputs that never collide, the VA file beside each
recording, bad files reported and skipped, a summary and exit code 2."""

import csv
import pathlib
import re

import numpy as np
import pytest
import soundfile as sf

from configs import vap
from convssl_jax import errors, predict
from convssl_jax.data import textgrid
from convssl_jax.data import va as va_lib
from data_builders.synthetic_dialogs import generator
from tests import processes

HZ = 50


@pytest.mark.parametrize('names, expected', [
    (['a.wav', 'b.wav'], ['a', 'b']),
    (['x.wav', 'x.flac', 'y.wav'], ['x.wav', 'x.flac', 'y']),
    (['x.wav', 'X.flac'], ['x.wav', 'X.flac']),  # one file on macOS and Windows
    (['x.p01.wav', 'x.wav'], ['x.p01.wav', 'x.wav']),  # x's first page would be x.p01.png
    # x.wav.flac's stem is x.wav, the name x.wav takes once x.flac clashes with it.
    (['x.wav', 'x.flac', 'x.wav.flac'], ['x.wav', 'x.flac', 'x.wav.flac']),
])
def test_outputs_are_named_by_stem_unless_stems_clash(names, expected):
  files = [pathlib.Path('in') / n for n in names]
  assert list(predict.output_names(files).values()) == expected


def _textgrid(path, tiers, xmax):
  path.write_text(textgrid.format_textgrid(
      [(name, [(s, e, 'speech') for s, e in segments]) for name, segments in tiers], xmax=xmax))


def _wav(path, samples, rate=16000):
  sf.write(path, samples, rate)
  return path


@pytest.fixture(scope='module')
def audio():
  return generator.generate_dialog(7, generator.DialogConfig(duration_s=12.0)).audio


def test_an_output_folder_that_would_overwrite_an_input_is_refused_before_anything_runs(
    audio, tmp_path):
  _wav(tmp_path / 'b.wav', audio[:16000])
  (tmp_path / 'b.json').write_text('[[[0.1, 0.5]], []]')  # its VA list; predict writes b.json
  with pytest.raises(errors.UserError, match=f'overwrite {tmp_path / "b.json"}; choose another'):
    predict.predict_files(None, vap.get_config('tiny'), [tmp_path / 'b.wav'], output=tmp_path,
                          beside=True)  # no model: refused before it is used


def test_va_with_a_folder_is_one_line_and_exit_2(tmp_path):
  out = processes.run('run.py', '--config=configs/vap.py:tiny', '--mode=predict',
                      f'--audio={tmp_path}', f'--va={tmp_path / "va.json"}')
  assert out.returncode == 2, out.stderr[-2000:]
  assert out.stderr.strip().splitlines() == [
      "error: --va goes with a single --audio file; a folder's files are read with the VA list "
      'or TextGrid beside each one (<name>.json, <name>.TextGrid)']


def test_predict_over_a_folder_reads_va_beside_skips_bad_files_and_exits_2(tiny_run, audio,
                                                                           tmp_path):
  config, workdir = tiny_run
  folder, output = tmp_path / 'in', tmp_path / 'out'
  folder.mkdir()
  _wav(folder / 'a.wav', audio[:3 * 16000])
  _wav(folder / 'a.flac', audio[3 * 16000:6 * 16000])  # same stem: a.wav.*, a.flac.*
  # a.TextGrid lies beside both: three tiers, the speakers named with --va_tiers.
  va_a = [[(0.5, 1.2), (2.0, 2.6)], [(1.3, 1.9)]]
  _textgrid(folder / 'a.TextGrid', [('noise', [(0.0, 3.0)]), ('left', va_a[0]),
                                    ('right', va_a[1])], xmax=3.0)
  _wav(folder / 'b.wav', audio[:2 * 16000])
  (folder / 'b.json').write_text('[[[0.2, 0.8]], [[1.0, 1.5]]]')
  _wav(folder / 'c.wav', audio[:2 * 16000])  # no VA beside: the model's VAD, no events
  (folder / 'd.wav').write_bytes(b'RIFF0000WAVEfmt garbage')  # corrupt
  _wav(folder / 'e.wav', audio[:2 * 16000])
  (folder / 'e.json').write_text('[[[0.5, 9.0]], []]')  # past the end of its 2 s of audio
  out = processes.run('run.py', '--config=configs/vap.py:tiny', f'--workdir={workdir}',
                      f'--config.data.data_dir={config.data.data_dir}', '--mode=predict',
                      f'--audio={folder}', f'--output={output}', '--va_tiers=left,right')
  assert out.returncode == 2, out.stderr[-3000:]
  errors_ = [line for line in out.stderr.splitlines() if line.startswith('error: ')]
  assert len(errors_) == 3, out.stderr[-3000:]
  assert errors_[0].startswith(f'error: {folder / "d.wav"}: ') and errors_[0].endswith('(skipped)')
  assert errors_[1].startswith(f'error: {folder / "e.wav"}: channel 0 segment 0 [0.5, 9.0]: '
                               'ends after the end of the audio (2.00 s)')
  assert errors_[2] == (f'error: 2 of 6 files failed (d.wav, e.wav; see above); the other 4 '
                        f'were written to {output}')
  assert re.search(r'predict: 100%.*\| 6/6', out.stderr)  # the folder's progress bar

  assert {p.name for p in output.glob('*.json')} == {'a.wav.json', 'a.flac.json', 'b.json',
                                                     'c.json'}
  assert re.findall(r'<a href="([^"]+)">', (output / 'index.html').read_text()) == [
      'a.flac.html', 'a.wav.html', 'b.html', 'c.html']
  lines = out.stdout.splitlines()
  assert any(line.startswith(f'{folder / "a.wav"}: 150 frames, VA from a.TextGrid, ')
             for line in lines), lines
  for name, va_list, frames in (('a.wav', va_a, 150), ('a.flac', va_a, 150),
                                ('b', [[[0.2, 0.8]], [[1.0, 1.5]]], 100)):
    with open(output / f'{name}.csv') as f:
      rows = list(csv.DictReader(f))
    got = np.array([[float(r['va_A']), float(r['va_B'])] for r in rows])
    np.testing.assert_array_equal(got, va_lib.va_frames(va_list, frames, HZ), err_msg=name)
    assert 'p_A' in rows[0], name  # the next-speaker probability needs the VA
  with open(output / 'c.csv') as f:
    assert 'p_A' not in next(csv.DictReader(f))
  assert (output / 'c.TextGrid').read_text().count('(model VAD)') == 2
  assert sorted(p.name for p in folder.iterdir()) == [  # the inputs untouched
      'a.TextGrid', 'a.flac', 'a.wav', 'b.json', 'b.wav', 'c.wav', 'd.wav', 'e.json', 'e.wav']
