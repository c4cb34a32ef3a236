"""Predict's PNG pages: 60 s a page on one time scale, titled with the file, model and checkpoint;
a silent channel said to be silent; the model's VAD drawn as curves."""

import matplotlib.pyplot as plt
import numpy as np
import pytest

from convssl_jax import plots, predict

HZ = 50


def _result(seconds: float, *, silent_b: bool = False, with_va: bool = True):
  frames = int(seconds * HZ)
  rng = np.random.default_rng(0)
  envelope = rng.uniform(0, 1, (frames, 2)).astype(np.float32)
  if silent_b:
    envelope[:, 1] = 0
  vad = rng.uniform(0, 0.45, (frames, 2)).astype(np.float32)  # never >= 0.5
  va = (rng.uniform(size=(frames, 2)) > 0.5).astype(np.float32)
  return {'frame_hz': HZ, 'va': va if with_va else np.zeros_like(va), 'envelope': envelope,
          'p_now': rng.uniform(size=(frames, 2)).astype(np.float32), 'vad': vad,
          'events': {'shift': np.zeros((frames, 2), bool)} if with_va else {}}


def _pages(result, tmp_path, title='rec.wav'):
  dialog = {k: result[k] for k in ('envelope', 'p_now', 'vad')}
  if result['events']:
    dialog['va'] = result['va']
  return list(plots.page_figures(dialog, result['events'], frame_hz=HZ,
                                 stem_path=tmp_path / 'rec', title=title,
                                 subtitle='model: tiny, checkpoint: run (best, step 20)',
                                 va_label='VA'))


def test_a_long_prediction_is_split_into_pages_of_60_s_on_one_time_scale(tmp_path):
  pages = _pages(_result(130.0), tmp_path)
  try:
    assert [p.name for p, _ in pages] == ['rec.p01.png', 'rec.p02.png', 'rec.p03.png']
    assert [fig.axes[-1].get_xlim() for _, fig in pages] == [(0, 60), (60, 120), (120, 180)]
    assert pages[2][1]._suptitle.get_text() == (
        'rec.wav: 120-130 s, page 3 of 3\nmodel: tiny, checkpoint: run (best, step 20)')
  finally:
    for _, fig in pages:
      plt.close(fig)


def test_a_short_prediction_is_one_page_named_as_before(tmp_path):
  [(path, fig)] = _pages(_result(20.0), tmp_path)
  plt.close(fig)
  assert path == tmp_path / 'rec.png' and fig._suptitle.get_text().startswith('rec.wav: 0-20 s\n')


@pytest.mark.parametrize('silent_b', [True, False])
def test_a_channel_silent_over_the_whole_recording_is_labelled_silent(tmp_path, silent_b):
  pages = _pages(_result(70.0, silent_b=silent_b), tmp_path)
  for _, fig in pages:
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts == (['speaker B: silent channel (all samples zero)'] if silent_b else [])
    plt.close(fig)


def test_without_va_the_models_vad_is_drawn_as_curves(tmp_path):
  result = _result(10.0, with_va=False)
  [(_, fig)] = _pages(result, tmp_path)
  va_axes = fig.axes[1]
  curves = [line.get_ydata() for line in va_axes.lines if line.get_label().startswith('model')
            or line.get_color() == 'black']
  plt.close(fig)
  # Each speaker's VAD in its lane (A from 0, B from 1, 0.8 high): visible though never >= 0.5.
  assert len(curves) == 2
  np.testing.assert_allclose(curves[0], 0.8 * result['vad'][:, 0], rtol=1e-6)
  np.testing.assert_allclose(curves[1], 1 + 0.8 * result['vad'][:, 1], rtol=1e-6)
  assert not va_axes.collections  # no VA filled in, no events


def test_predict_writes_the_pages_with_the_legends_file_model_and_checkpoint(tmp_path):
  written = predict.write(_result(61.0, with_va=False), tmp_path, 'rec',
                          legend={'file': 'in/rec.wav', 'model': 'tiny', 'checkpoint': 'run'})
  assert [p.name for p in written['png']] == ['rec.p01.png', 'rec.p02.png']
  assert all(p.stat().st_size > 0 for p in written['png'])
