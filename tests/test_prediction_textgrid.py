"""Predict's TextGrid: Praat's long text format, the tiers of a prediction, read back by the
project's own TextGrid reader."""

import numpy as np
import pytest

from convssl_jax import predict
from convssl_jax.data import textgrid, va_files

HZ = 10


def test_a_small_textgrid_is_written_as_praat_writes_it_gaps_filled():
  text = textgrid.format_textgrid([('A', [(0.5, 1.2, 'speech')]), ('say "hi"', [])], xmax=2.0)
  assert text == '''File type = "ooTextFile"
Object class = "TextGrid"

xmin = 0 
xmax = 2 
tiers? <exists> 
size = 2 
item []: 
    item [1]:
        class = "IntervalTier" 
        name = "A" 
        xmin = 0 
        xmax = 2 
        intervals: size = 3 
        intervals [1]:
            xmin = 0 
            xmax = 0.5 
            text = "" 
        intervals [2]:
            xmin = 0.5 
            xmax = 1.2 
            text = "speech" 
        intervals [3]:
            xmin = 1.2 
            xmax = 2 
            text = "" 
    item [2]:
        class = "IntervalTier" 
        name = "say ""hi""" 
        xmin = 0 
        xmax = 2 
        intervals: size = 1 
        intervals [1]:
            xmin = 0 
            xmax = 2 
            text = "" 
'''


def test_intervals_out_of_order_are_a_bug_not_a_file():
  with pytest.raises(ValueError, match="tier 'A'"):
    textgrid.format_textgrid([('A', [(1.0, 1.5, 'x'), (1.2, 1.8, 'y')])], xmax=2.0)


def _result(with_va: bool):
  """10 frames at 10 Hz, hand-made: A speaks frames 0-3, B frames 5-8; a shift about B at frames
  4-5, a hold about A at frame 9 and about B at frames 8-9; p_future(A) >= 0.5 on frames 0-2."""
  va = np.zeros((10, 2), np.float32)
  va[0:4, 0] = va[5:9, 1] = 1
  shift, hold = np.zeros((10, 2), bool), np.zeros((10, 2), bool)
  shift[4:6, 1] = True
  hold[9, 0] = hold[8:10, 1] = True
  p_future = np.full((10, 2), 0.3, np.float32)
  p_future[0:3, 0] = 0.5
  vad = np.full((10, 2), 0.1, np.float32)
  vad[2:7, 0] = 0.9  # frames 2-6: [0.2, 0.7] s
  return {'frame_hz': HZ, 'va': va if with_va else np.zeros_like(va), 'p_future': p_future,
          'vad': vad, 'events': {'shift': shift, 'hold': hold} if with_va else {}}


def test_the_tiers_of_a_prediction_with_va_and_events():
  assert predict.textgrid_tiers(_result(with_va=True)) == [
      ('A', [(0.0, 0.4, 'speech')]),
      ('B', [(0.5, 0.9, 'speech')]),
      ('shift', [(0.4, 0.6, 'B')]),
      ('hold', [(0.8, 0.9, 'B'), (0.9, 1.0, 'A+B')]),
      ('p_future >= 0.5', [(0.0, 0.3, 'A'), (0.3, 1.0, 'B')]),
  ]


def test_without_va_the_speaker_tiers_are_the_models_vad():
  assert predict.textgrid_tiers(_result(with_va=False)) == [
      ('A (model VAD)', [(0.2, 0.7, 'speech')]),
      ('B (model VAD)', []),
      ('p_future >= 0.5', [(0.0, 0.3, 'A'), (0.3, 1.0, 'B')]),
  ]


def test_the_written_textgrid_reads_back_with_the_projects_reader(tmp_path):
  written = predict.write(_result(with_va=True), tmp_path, 'd')
  path = written['TextGrid']
  assert path == tmp_path / 'd.TextGrid'
  # As a VA list (--va d.TextGrid --va_tiers=A,B): the speakers' speech.
  assert va_files.read_va_file(path, tiers=('A', 'B')) == [[[0.0, 0.4]], [[0.5, 0.9]]]
  tiers = textgrid.interval_tiers(path.read_text(), source=str(path))
  assert [name for name, _ in tiers] == ['A', 'B', 'shift', 'hold', 'p_future >= 0.5']
  speech = {name: list(bounds) for name, bounds in tiers}
  assert speech['shift'] == [0.4, 0.6]
  assert speech['hold'] == [0.8, 1.0]  # touching labelled intervals read as one stretch
  assert speech['p_future >= 0.5'] == [0.0, 1.0]  # every frame is labelled A or B
