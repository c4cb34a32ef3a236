"""Prediction on recordings: a trained model's per-frame turn-taking curves for audio files.

Files of any length go through the evaluation's overlapping windows (`evaluate.predict_dialogs`),
so every frame has at least `eval.context_s` of audio before it. A stereo file holds one speaker
per channel; a mono file is speaker A with a silent B. The current voice activity, which the mono
model reads and the next-speaker probability `p` depends on, comes from a VA list (JSON: two lists
of [start, end] seconds, speaker A then B); without one the output has no `p` and no events.
"""

import csv
import json
import os
import pathlib
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import soundfile as sf

from convssl_jax import errors, evaluate, plots, viewer
from convssl_jax.data import audio as audio_lib
from convssl_jax.data import pipeline
from convssl_jax.data import va as va_lib
from convssl_jax.data import va_files
from convssl_jax.data.pipeline import F0_HZ, SAMPLE_RATE
from convssl_jax.events import TurnTakingEvents
from convssl_jax.model_state import ModelState
from convssl_jax.models import factory

AUDIO_SUFFIXES = ('.wav', '.flac', '.ogg', '.sph', '.aiff', '.aif')
CURVES = ('p', 'p_now', 'p_future', 'p_bc', 'vad')  # per speaker, as the head has them


def audio_files(path) -> list[pathlib.Path]:
  """`path` itself, or the audio files of a folder (sorted)."""
  path = pathlib.Path(path)
  if path.is_dir():
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
      raise audio_lib.AudioError(f'{path}: no audio files ({", ".join(AUDIO_SUFFIXES)})')
    return files
  return [path]


def notice_rate(path) -> None:
  """Says on stderr when an audio file is not at 16 kHz (it is resampled when read)."""
  try:
    rate = sf.info(str(path)).samplerate
  except (RuntimeError, OSError):
    return  # reading it will fail with a clear error
  if rate != SAMPLE_RATE:
    print(f'{path}: {rate} Hz, resampled to {SAMPLE_RATE} Hz', file=sys.stderr)


def read_va_list(path, tiers=None) -> list[list[list[float]]]:
  """A VA list from a JSON file (a VA list, or predict's output JSON: its `vad_list`) or a Praat
  TextGrid (`textgrid.choose`: the speaker tiers named by `tiers`, else recognised)."""
  return va_files.read_va_file(path, tiers=tiers)


ARRAY = 'the audio array'  # how messages name audio given as samples


def recording(audio, va_list=None) -> pipeline.Corpus:
  """One audio file, or samples [S] or [S, 2] at 16 kHz (and its VA list, if known), as a
  one-conversation corpus."""
  if isinstance(audio, (str, os.PathLike)):
    wave, path = audio_lib.read_stereo(audio, sample_rate=SAMPLE_RATE), audio
  else:
    wave, path = audio_lib.as_stereo(audio, source=ARRAY), ARRAY
  duration = len(wave) / SAMPLE_RATE
  segments = va_lib.va_segments(va_list or [[], []], source=str(path),
                                duration_s=duration)  # float64, as stored
  example = {'audio': audio_lib.to_int16(wave), 'va': segments,
             'f0': np.zeros((len(wave) * F0_HZ // SAMPLE_RATE, 2), np.float32)}
  return pipeline.Corpus(source=[example], sessions=(pathlib.Path(path).stem,),
                         durations=np.array([duration]))


def predict_file(model: ModelState, config, path, va_list=None) -> dict[str, Any]:
  """Per-frame curves [T, 2] of one file, its VA [T, 2] and, with a VA list, its events."""
  name = path if isinstance(path, (str, os.PathLike)) else ARRAY  # or samples (`recording`)
  if va_list is None and 'va' in factory.model_class(config.model).inputs:
    raise errors.InputError(f'{name}: the model reads the current voice activity (the mono '
                            'model): give a VA list (--va)')
  corpus = recording(path, va_list)
  audio_lib.check_length(len(corpus.source[0]['audio']), SAMPLE_RATE, config.model.frame_hz,
                         source=name)
  dialog = evaluate.predict_dialogs(model, config, corpus)[0]
  frames = len(dialog['p'])
  out = {'frame_hz': config.model.frame_hz, 'va': dialog['va'][:frames],
         'envelope': envelope(corpus.source[0]['audio'], frames),
         **{k: dialog[k] for k in CURVES if k in dialog}}
  out['events'] = {}
  if va_list is None:
    del out['p']
  else:
    out['events'] = TurnTakingEvents(config.model.frame_hz, **config.eval.events)(
        dialog['va'], max_frame=frames)
  return out


def envelope(audio: np.ndarray, frames: int) -> np.ndarray:
  """Peak amplitude [frames, 2] in [0, 1] of int16 audio [S, 2] per frame (for plots)."""
  hop = len(audio) // frames if frames else 1
  peaks = np.abs(audio[:hop * frames].astype(np.float32)).reshape(frames, hop, 2).max(1)
  return peaks / audio_lib.INT16_SCALE


def event_list(events: dict[str, np.ndarray], frame_hz: int) -> list[dict[str, Any]]:
  """Event masks -> [{'event', 'speaker', 'start', 'end'}] in seconds, in time order."""
  found = []
  for name, mask in events.items():
    for speaker in (0, 1):
      edges = np.diff(np.concatenate([[0], mask[:, speaker].astype(int), [0]]))
      for start, end in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)):
        found.append({'event': name, 'speaker': 'AB'[speaker], 'start': start / frame_hz,
                      'end': end / frame_hz})
  return sorted(found, key=lambda e: (e['start'], e['event']))


def described(result: dict[str, Any]) -> dict[str, Any]:
  """A prediction (`predict_file`'s) as predict's JSON holds it, unrounded: 'frame_hz', 'time'
  [T] (seconds), 'va' and the curves [T, 2] (column 0 speaker A), 'events' (`event_list`) and,
  with the model's VAD, 'vad_list' (`vad_va_list`)."""
  hz = result['frame_hz']
  out = {'frame_hz': hz, 'time': np.arange(len(result['va'])) / hz,
         **{k: result[k] for k in ('va', *CURVES) if k in result},
         'events': event_list(result['events'], hz)}
  if 'vad' in result:
    out['vad_list'] = vad_va_list(result['vad'], hz)
  return out


def _runs(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(starts, lengths, values) of the runs of equal values in x [T]."""
  edges = np.flatnonzero(np.diff(x)) + 1
  starts = np.concatenate([[0], edges]) if len(x) else np.zeros(0, np.int64)
  return starts, np.diff(np.concatenate([starts, [len(x)]])), x[starts]


def vad_va_list(vad: np.ndarray, frame_hz: int, fill_s: float = 0.02, omit_s: float = 0.02,
                merge_s: float = 0.1) -> list[list[list[float]]]:
  """The model's VAD [T, 2] as a VA list, as the reference's `vad()` and
  `vad_onehot_to_vad_list`: active where >= 0.5; silences of at most round(fill_s * hz) frames
  filled, then active runs of at most round(omit_s * hz) frames dropped; segments in seconds
  (2 decimals), merged across gaps shorter than `merge_s`."""
  va_list = []
  for channel in np.asarray(vad).T:
    active = (channel >= 0.5).astype(np.int8)
    for value, most in ((0, round(fill_s * frame_hz)), (1, round(omit_s * frame_hz))):
      for start, length, v in zip(*_runs(active)):
        if v == value and length <= most:
          active[start:start + length] = 1 - value
    segments = []
    for start, length, v in zip(*_runs(active)):
      if v == 1:
        s, e = round(start / frame_hz, 2), round((start + length) / frame_hz, 2)
        if segments and s - segments[-1][1] < merge_s:
          segments[-1][1] = e
        else:
          segments.append([s, e])
    va_list.append(segments)
  return va_list


def write(result: dict[str, Any], directory, stem: str, *, audio=None,
          legend: dict[str, Any] | None = None) -> list[pathlib.Path]:
  """`<stem>.json` (curves, events, the model's VAD as a VA list), `<stem>.csv` (a row per frame),
  `<stem>.png` and `<stem>.html` (the interactive page: `viewer.write_html`, playing `audio`,
  naming `legend`'s file, model and checkpoint)."""
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  hz = result['frame_hz']
  columns = {f'{k}_{s}': result[k][:, i] for k in ('va', *CURVES) if k in result
             for i, s in enumerate('AB')}
  time = np.arange(len(result['va'])) / hz
  paths = [directory / f'{stem}.{ext}' for ext in ('json', 'csv', 'png')]
  paths[0].write_text(json.dumps({
      'frame_hz': hz, 'time': time.round(6).tolist(),
      **{k: np.round(v, 5).tolist() for k, v in columns.items()},
      'events': event_list(result['events'], hz),
      **({'vad_list': vad_va_list(result['vad'], hz)} if 'vad' in result else {})}))
  with open(paths[1], 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['time', *columns])
    writer.writerows(zip(time.round(6), *(np.round(v, 5) for v in columns.values())))
  # Without a VA list the plot shows the model's own VAD (>= 0.5) as voice activity.
  va = result['va'] if result['events'] or 'vad' not in result else result['vad'] >= 0.5
  curves = {k: result[k] for k in (*CURVES, 'envelope') if k in result}
  plots.excerpt({**curves, 'va': va.astype(np.float32)}, result['events'], frame_hz=hz,
                seconds=len(time) / hz, path=paths[2])
  paths.append(viewer.write_html(result, directory / f'{stem}.html', audio=audio, legend=legend))
  return paths


def legend_of(config, source: str) -> dict[str, str]:
  """What the plots and pages name as the model and checkpoint."""
  m = config.model
  return {'model': f'{m.kind} VAP, {m.encoder.name} encoder, {m.vap.head} head, dim {m.dim}, '
                   f'{m.frame_hz} Hz', 'checkpoint': source}


def predict_files(model: ModelState, config, files, va_list=None, output='predictions', *,
                  source: str = '', index: bool = False) -> Iterator[str]:
  """Predicts every audio file of `files` with `model` (a VA list applies to a single file) and
  writes its outputs to `output` (their legends naming `source`, the model's checkpoint; with
  `index`, an index.html linking every page); yields one line per file saying what was written."""
  output = pathlib.Path(output)
  legend, pages = legend_of(config, source), []
  for path in files:
    notice_rate(path)
    result = predict_file(model, config, path, va_list)
    written = write(result, output, pathlib.Path(path).stem, audio=path,
                    legend={'file': path, **legend})
    pages.append(viewer.index_entry(written[-1], result))
    events = event_list(result['events'], config.model.frame_hz)
    yield (f'{path}: {len(result["va"])} frames, {len(events)} events -> '
           + ', '.join(map(str, written)))
  if index:
    yield f'index: {viewer.write_index(pages, output / "index.html")}'
