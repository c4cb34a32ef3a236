"""Prediction on recordings: whole files of any length, VA lists, outputs, bad files."""

import csv
import json
import pathlib
import re
import shutil

import jax
import numpy as np
import pytest
import soundfile as sf

from configs import vap
from convssl_jax import errors, model_state, predict, trainer
from convssl_jax.data import audio as audio_lib
from convssl_jax.data import va as va_lib
from convssl_jax.events import TurnTakingEvents
from data_builders.synthetic_dialogs import generator
from tests import checkpoint_damage, processes

HZ = 50


@pytest.fixture(scope='module')
def trained(tiny_run):
  config, workdir = tiny_run
  model, _ = trainer.restore_model(config, workdir, 'best')
  return config, model


@pytest.fixture(scope='module')
def dialog():
  return generator.generate_dialog(7, generator.DialogConfig(duration_s=12.0))


def _wav(path, samples, rate=16000):
  sf.write(path, samples, rate)
  return path


def test_a_file_longer_than_a_window_gives_every_frame_and_the_events_of_its_va(
    trained, dialog, tmp_path):
  config, model = trained
  path = _wav(tmp_path / 'd.wav', dialog.audio)
  result = predict.predict_file(model, config, path, dialog.va_list)
  frames = va_lib.num_frames(12.0, HZ)
  assert all(result[k].shape == (frames, 2) for k in ('va', 'p', 'p_now', 'p_bc', 'vad'))
  va = va_lib.va_frames(dialog.va_list, frames, HZ)
  np.testing.assert_array_equal(result['va'], va)
  expected = TurnTakingEvents(HZ, **config.eval.events)(
      np.concatenate([va, np.zeros((100, 2), np.float32)]), max_frame=frames)
  for key, mask in expected.items():
    np.testing.assert_array_equal(result['events'][key], mask, err_msg=key)
  # The first 5 s come from the first window alone: the same as predicting on the first 5 s.
  short = _wav(tmp_path / 'short.wav', dialog.audio[:5 * 16000])
  va_head = [[[s, min(e, 5.0)] for s, e in channel if s < 5.0] for channel in dialog.va_list]
  head = predict.predict_file(model, config, short, va_head)
  np.testing.assert_allclose(result['p_bc'][:250], head['p_bc'], atol=1e-6)


def test_a_va_list_is_framed_from_its_float64_times(trained, dialog, tmp_path):
  # 0.7 / 0.02 = 35.0 in float64, but float32(0.7) / 0.02 = 34.99999940395355: frames [15, 35).
  config, model = trained
  path = _wav(tmp_path / 'd.wav', dialog.audio)
  result = predict.predict_file(model, config, path, [[[0.3, 0.7]], [[1.0, 1.5]]])
  np.testing.assert_array_equal(np.flatnonzero(result['va'][:, 0]), np.arange(15, 35))
  np.testing.assert_array_equal(np.flatnonzero(result['va'][:, 1]), np.arange(50, 75))


def test_the_models_vad_becomes_a_va_list_as_the_references_does():
  vad = np.full((40, 2), 0.1, np.float32)
  # A: frames 0-4 active but frame 2 (0.4 < 0.5): the 1-frame gap is filled; the 1-frame spike at
  # frame 8 is dropped -> [0, 5) = [0.0, 0.1] s.
  vad[[0, 1, 3, 4, 8], 0] = [0.6, 0.5, 0.6, 0.9, 0.7]
  vad[2, 0] = 0.4
  # B: frames 10-19 and 22-29, a 2-frame (0.04 s < 0.1 s) gap: one segment [0.2, 0.6] s.
  vad[10:20, 1] = vad[22:30, 1] = 0.8
  assert predict.vad_va_list(vad, HZ) == [[[0.0, 0.1]], [[0.2, 0.6]]]
  assert predict.vad_va_list(np.zeros((0, 2)), HZ) == [[], []]


def test_outputs_are_a_frame_table_json_with_events_and_a_plot(trained, dialog, tmp_path):
  config, model = trained
  path = _wav(tmp_path / 'd.wav', dialog.audio)
  result = predict.predict_file(model, config, path, dialog.va_list)
  written = predict.write(result, tmp_path / 'out', 'd', audio=path, legend={'file': path})
  json_path, csv_path, [png_path], html_path = (written[k] for k in ('json', 'csv', 'png', 'html'))
  with open(csv_path) as f:
    rows = list(csv.reader(f))
  assert rows[0][:5] == ['time', 'va_A', 'va_B', 'p_A', 'p_B'] and len(rows) == 1 + 600
  np.testing.assert_allclose(float(rows[101][0]), 100 / HZ)
  written = json.loads(json_path.read_text())
  np.testing.assert_allclose(written['p_bc_A'], result['p_bc'][:, 0], atol=1e-5)
  assert written['vad_list'] == predict.vad_va_list(result['vad'], HZ)
  shifts = [e for e in written['events'] if e['event'] == 'shift']
  assert len(shifts) == sum(np.diff(np.r_[0, m.astype(int)]).clip(0).sum()
                            for m in result['events']['shift'].T)
  assert png_path.stat().st_size > 0
  page = html_path.read_text()  # the viewer's page (tests/test_viewer*.py), with the audio in it
  assert html_path.name == 'd.html' and '<title>d.wav</title>' in page
  assert 'src="data:audio/wav;base64,' in page


def test_without_a_va_list_there_is_no_next_speaker_probability_or_events(trained, dialog,
                                                                          tmp_path):
  config, model = trained
  result = predict.predict_file(model, config, _wav(tmp_path / 'd.wav', dialog.audio))
  assert 'p' not in result and not result['events'] and 'p_now' in result
  assert all(p.exists() for p in predict.written_paths(predict.write(result, tmp_path, 'd')))


def test_predict_mode_on_a_folder_writes_a_page_per_file_and_an_index(tiny_run, dialog,
                                                                     tmp_path):
  config, workdir = tiny_run
  folder = tmp_path / 'in'
  folder.mkdir()
  for name, start in (('one', 0), ('two', 4)):
    _wav(folder / f'{name}.wav', dialog.audio[start * 16000:(start + 3) * 16000])
  out = processes.run('run.py', '--config=configs/vap.py:tiny', f'--workdir={workdir}',
                      f'--config.data.data_dir={config.data.data_dir}', '--mode=predict',
                      f'--audio={folder}', f'--output={tmp_path / "out"}')
  assert out.returncode == 0, out.stderr[-3000:]
  index = (tmp_path / 'out' / 'index.html').read_text()
  assert re.findall(r'<a href="([^"]+)">', index) == ['one.html', 'two.html']
  for name in ('one', 'two'):
    page = (tmp_path / 'out' / f'{name}.html').read_text()
    assert f'<dt>file</dt><dd>{folder / name}.wav</dd>' in page
    assert '<dt>model</dt><dd>stereo VAP, cpc encoder, discrete head, dim 32, 50 Hz</dd>' in page
    assert f'<dt>checkpoint</dt><dd>{workdir} (best checkpoint, step ' in page


def test_a_mono_file_is_speaker_a_and_other_rates_are_resampled(dialog, tmp_path):
  mono = _wav(tmp_path / 'm.wav', dialog.audio[::2, 0], rate=8000)
  corpus = predict.recording(mono)
  audio = corpus.source[0]['audio']
  assert audio.shape == (12 * 16000, 2) and not audio[:, 1].any() and audio[:, 0].any()


def test_the_mono_model_needs_a_va_list(dialog, tmp_path):
  config = vap.get_config('tiny,mono')
  with pytest.raises(ValueError, match='give a VA list'):
    predict.predict_file(None, config, _wav(tmp_path / 'd.wav', dialog.audio))


@pytest.mark.parametrize('samples, message', [
    (np.full((1600, 2), np.nan, np.float32), 'NaN or infinite'),
    (np.zeros((0, 2), np.float32), 'no samples'),
    (np.zeros((1600, 3), np.float32), '3 channels'),
])
def test_bad_files_are_refused_naming_them(tmp_path, samples, message):
  path = tmp_path / 'bad.wav'
  sf.write(path, samples, 16000, subtype='FLOAT')
  with pytest.raises(audio_lib.AudioError, match=f'{path}.*{message}'):
    predict.recording(path)


def test_a_corrupt_file_is_refused_naming_it(tmp_path):
  path = tmp_path / 'corrupt.wav'
  path.write_bytes(b'RIFF0000WAVEfmt garbage')
  with pytest.raises(audio_lib.AudioError, match=str(path)):
    predict.recording(path)


def test_a_folder_gives_its_audio_files_in_order(tmp_path):
  for name in ('b.wav', 'a.flac', 'notes.txt'):
    (tmp_path / name).write_bytes(b'')
  assert [p.name for p in predict.audio_files(tmp_path)] == ['a.flac', 'b.wav']


# Bad input refused at the edge, before the model runs or anything is written.

@pytest.mark.parametrize('va_list, named', [
    ([[[0.5, 1e300]], []], r'channel 0 segment 0 \[0.5, 1e\+300\]'),  # was dropped by overflow
    ([[[1.0, 2.0]], [[3.0, 4.0], [20.0, 21.0]]], r'channel 1 segment 1 \[20.0, 21.0\]'),
    ([[[12.06, 12.5]], []], r'channel 0 segment 0 \[12.06, 12.5\]'),  # entirely past the end
])
def test_a_va_list_past_the_audio_is_refused_naming_the_file_channel_and_segment(
    dialog, tmp_path, va_list, named):
  path = _wav(tmp_path / 'd.wav', dialog.audio)  # 12 s
  with pytest.raises(errors.InputError,
                     match=f'^{path}: {named}: ends after the end of the audio \\(12.00 s\\)'):
    predict.recording(path, va_list)


def test_a_va_list_within_the_tolerance_of_the_audio_end_is_accepted(dialog, tmp_path):
  path = _wav(tmp_path / 'd.wav', dialog.audio)  # 12 s = 600 frames at 50 Hz
  corpus = predict.recording(path, [[[11.9, 12.04]], []])
  np.testing.assert_array_equal(corpus.source[0]['va'], [[0, 11.9, 12.04]])


@pytest.mark.parametrize('content, message', [
    ('[' * 100_000 + ']' * 100_000, 'nested too deeply'),
    ('[[[0, 1' + '0' * 5000 + ']], []]', 'an integer of 5001 digits'),
    ('[[[0, 1]], []', 'not valid JSON'),
])
def test_a_bad_va_json_is_refused_in_one_line_naming_it(tmp_path, content, message):
  path = tmp_path / 'va.json'
  path.write_text(content)
  with pytest.raises(errors.InputError, match=f'^{path}: .*{message}') as err:
    predict.read_va_list(path)
  assert '\n' not in str(err.value)


@pytest.mark.parametrize('samples', [1, 319])
def test_audio_shorter_than_one_frame_is_refused_before_the_model_runs(tmp_path, samples):
  # No model is given: the refusal must come before anything uses it (or writes outputs).
  path = _wav(tmp_path / 'tiny.wav', np.full((samples, 2), 0.1, np.float32))
  with pytest.raises(audio_lib.AudioError, match=f'^{path}: .* shorter than one model frame; '
                     r'give at least 20 ms \(50 Hz frames\)'):
    predict.predict_file(None, vap.get_config('tiny'), path)


def test_one_frame_of_audio_predicts_and_writes_one_row(trained, tmp_path):
  config, model = trained
  path = _wav(tmp_path / 'one.wav', np.full((320, 2), 0.1, np.float32))  # 20 ms
  result = predict.predict_file(model, config, path, [[[0.0, 0.02]], []])
  assert result['va'].shape == result['p_now'].shape == (1, 2)
  written = predict.write(result, tmp_path / 'out', 'one')
  assert len(written['csv'].read_text().splitlines()) == 2
  assert [p.name for p in written['png']] == ['one.png'] and written['png'][0].stat().st_size > 0
  assert written['html'].stat().st_size > 0 and written['TextGrid'].stat().st_size > 0


def _copy_checkpoints(workdir, to, best_only=False):
  shutil.copytree(workdir / 'checkpoints', to / 'checkpoints',
                  ignore=None if not best_only else lambda d, names: [
                      n for n in names if n.isdigit() and pathlib.Path(d).name == 'checkpoints'])
  return to


def _truncate_data_files(directory):
  files = [p for p in directory.rglob('*') if p.is_file() and p.parent.name == 'd']
  assert files
  for path in files:
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 8])


def test_predict_with_a_damaged_best_uses_the_latest_intact_checkpoint(tiny_run, trained,
                                                                      dialog, tmp_path):
  config, workdir = tiny_run
  copy = _copy_checkpoints(workdir, tmp_path / 'run')
  best = next(p for p in (copy / 'checkpoints' / 'best').iterdir() if p.name.isdigit())
  model = trained[1]
  abstract = trainer.Trainer(config, model.mesh).abstract_stored_state()
  # An exponent bit: read back silently, the model's outputs were garbage.
  checkpoint_damage.flip_a_stored_bit(best, abstract, part=trainer.MODEL, bit=30)
  wav = _wav(tmp_path / 'd.wav', dialog.audio[:3 * 16000])
  out = processes.run('run.py', '--config=configs/vap.py:tiny', f'--workdir={copy}',
                      f'--config.data.data_dir={config.data.data_dir}', '--mode=predict',
                      f'--audio={wav}', f'--output={tmp_path / "out"}')
  assert out.returncode == 0, out.stderr[-3000:]
  warnings = [line for line in out.stderr.splitlines() if 'checkpoint' in line.lower()]
  assert len(warnings) == 1 and re.search(
      r'The best checkpoint in .*best cannot be used \(step \d+: damaged, its checksums do not '
      r'match: 1 of \d+ arrays differ from what was saved \(0/.*\)\); using the newest intact '
      r'training checkpoint, step 4, in its place', warnings[0]), out.stderr[-3000:]
  # The latest checkpoint is the best one's step here: the intact best's predictions.
  expected = predict.predict_file(model, config, wav)
  written = json.loads((tmp_path / 'out' / 'd.json').read_text())
  for i, speaker in enumerate('AB'):
    for curve in ('p_now', 'vad'):
      np.testing.assert_allclose(written[f'{curve}_{speaker}'], expected[curve][:, i], atol=1e-5)


def test_the_latest_intact_checkpoint_stands_in_for_a_truncated_best(tiny_run, trained,
                                                                   tmp_path, caplog):
  config, workdir = tiny_run
  copy = _copy_checkpoints(workdir, tmp_path / 'run')
  _truncate_data_files(copy / 'checkpoints' / 'best')
  with caplog.at_level('WARNING'):
    model, step = trainer.restore_model(config, copy, 'best')  # as eval and predict do
  assert step == 4 and 'OUT_OF_RANGE' in caplog.text and 'in its place' in caplog.text
  for a, b in zip(jax.tree.leaves(model.params), jax.tree.leaves(trained[1].params)):
    np.testing.assert_array_equal(np.asarray(jax.random.key_data(a) if model_state.is_key(a)
                                             else a),
                                  np.asarray(jax.random.key_data(b) if model_state.is_key(b)
                                             else b))


def test_a_truncated_best_and_no_other_checkpoint_is_one_line_and_exit_2(tiny_run, dialog,
                                                                        tmp_path):
  config, workdir = tiny_run
  copy = _copy_checkpoints(workdir, tmp_path / 'run', best_only=True)
  _truncate_data_files(copy / 'checkpoints' / 'best')
  out = processes.run('run.py', '--config=configs/vap.py:tiny', f'--workdir={copy}',
                      f'--config.data.data_dir={config.data.data_dir}', '--mode=predict',
                      f'--audio={_wav(tmp_path / "d.wav", dialog.audio[:16000])}',
                      f'--output={tmp_path / "out"}')
  assert out.returncode == 2, out.stderr[-3000:]
  assert 'Traceback' not in out.stderr and 'Event loop is closed' not in out.stderr
  last = out.stderr.strip().splitlines()[-1]
  assert re.fullmatch(r'error: no checkpoint in .*/run/checkpoints/best could be restored '
                      r'\(tried steps \[\d+\]\): step \d+: ValueError: OUT_OF_RANGE: .*\. Move the '
                      r'directory away to start over\.', last), last
  assert not (tmp_path / 'out').exists()
