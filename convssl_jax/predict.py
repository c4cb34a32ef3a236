"""Prediction on recordings: a trained model's per-frame turn-taking curves for audio files.

Files of any length go through the evaluation's overlapping windows (`evaluate.predict_dialogs`),
so every frame has at least `eval.context_s` of audio before it. A stereo file holds one speaker
per channel; a mono file is speaker A with a silent B. The current voice activity, which the mono
model reads and the next-speaker probability `p` depends on, comes from a VA list (JSON: two lists
of [start, end] seconds, speaker A then B); without one the output has no `p` and no events.
"""

import collections
import csv
import json
import os
import pathlib
import re
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import soundfile as sf

from convssl_jax import errors, evaluate, objective as objective_lib, plots, progress, viewer
from convssl_jax.data import audio as audio_lib
from convssl_jax.data import pipeline, textgrid
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


def predict_file(model: ModelState, config, path, va_list=None, *,
                 progress_desc: str | None = None) -> dict[str, Any]:
  """Per-frame curves [T, 2] of one file (or samples), its VA [T, 2] and, with a VA list, its
  events. With `progress_desc`, a file longer than one batch of windows shows a progress bar."""
  name = path if isinstance(path, (str, os.PathLike)) else ARRAY  # or samples (`recording`)
  if va_list is None and 'va' in factory.model_class(config.model).inputs:
    raise errors.InputError(f'{name}: the model reads the current voice activity (the mono '
                            'model): give a VA list (--va)')
  corpus = recording(path, va_list)
  audio_lib.check_length(len(corpus.source[0]['audio']), SAMPLE_RATE, config.model.frame_hz,
                         source=name)
  dialog = evaluate.predict_dialogs(model, config, corpus, desc=progress_desc)[0]
  frames = len(dialog['p'])
  out = {'frame_hz': config.model.frame_hz, 'va': dialog['va'][:frames],
         'envelope': envelope(corpus.source[0]['audio'], frames),
         **{k: dialog[k] for k in CURVES if k in dialog}}
  out['events'] = {}
  if va_list is None:
    del out['p']
  else:
    out['events'] = events_of(config, dialog['va'], frames)
  return out


def events_of(config, va: np.ndarray, frames: int) -> dict[str, np.ndarray]:
  """The turn-taking events [frames, 2] of VA frames [>= frames, 2] (silence after them), with
  `config.eval.events`' settings."""
  horizon = np.zeros((max(frames + objective_lib.for_model(config.model).horizon_frames
                          - len(va), 0), 2), np.float32)
  return TurnTakingEvents(config.model.frame_hz, **config.eval.events)(
      np.concatenate([va, horizon]), max_frame=frames)


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


def _tier(codes: np.ndarray, labels: Sequence[str], frame_hz: int
          ) -> list[tuple[float, float, str]]:
  """Frame codes [T] (ints indexing `labels`) -> intervals (start, end, label) in seconds of the
  runs whose label is not empty."""
  return [(start / frame_hz, (start + length) / frame_hz, labels[value])
          for start, length, value in zip(*_runs(np.asarray(codes, np.int64))) if labels[value]]


def textgrid_tiers(result: dict[str, Any]) -> list[tuple[str, list[tuple[float, float, str]]]]:
  """A prediction as TextGrid interval tiers: each speaker's voice activity ('A', 'B': the VA
  given, 'speech'; without one 'A (model VAD)', 'B (model VAD)': the model's VAD as `vad_va_list`
  makes it), a tier per turn-taking event (labelled by the speaker it is about: 'A', 'B' or
  'A+B'), and the next speaker: 'A' where speaker A's p_future (else p_now, else p) is >= 0.5,
  'B' where it is below."""
  hz, frames = result['frame_hz'], len(result['va'])
  given = bool(result['events']) or 'vad' not in result
  if given:
    tiers = [(s, _tier(result['va'][:, i] > 0, ('', 'speech'), hz)) for i, s in enumerate('AB')]
  else:
    tiers = [(f'{s} (model VAD)', [(start, end, 'speech') for start, end in segments])
             for s, segments in zip('AB', vad_va_list(result['vad'], hz))]
  for name in viewer.EVENT_ORDER:
    if name in result['events']:
      mask = np.asarray(result['events'][name])[:frames].astype(np.int64)
      tiers.append((name, _tier(mask[:, 0] + 2 * mask[:, 1], ('', 'A', 'B', 'A+B'), hz)))
  key = next((k for k in ('p_future', 'p_now', 'p') if k in result), None)
  if key:
    tiers.append((f'{key} >= 0.5', _tier(result[key][:, 0] >= 0.5, ('B', 'A'), hz)))
  return tiers


def write(result: dict[str, Any], directory, stem: str, *, audio=None,
          legend: dict[str, Any] | None = None) -> dict[str, Any]:
  """Writes a prediction; returns {kind: path}: 'json' (`<stem>.json`: curves, events, the model's
  VAD as a VA list), 'csv' (a row per frame), 'TextGrid' (`textgrid_tiers`, for Praat and ELAN),
  'png' (a list: `plots.pages`, 60 s a page, titled with `legend`'s file, model and checkpoint)
  and 'html' (the interactive page: `viewer.write_html`, playing `audio`)."""
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  legend = legend or {}
  hz = result['frame_hz']
  columns = {f'{k}_{s}': result[k][:, i] for k in ('va', *CURVES) if k in result
             for i, s in enumerate('AB')}
  time = np.arange(len(result['va'])) / hz
  paths = {ext: directory / f'{stem}.{ext}' for ext in ('json', 'csv', 'TextGrid')}
  paths['json'].write_text(json.dumps({
      'frame_hz': hz, 'time': time.round(6).tolist(),
      **{k: np.round(v, 5).tolist() for k, v in columns.items()},
      'events': event_list(result['events'], hz),
      **({'vad_list': vad_va_list(result['vad'], hz)} if 'vad' in result else {})}))
  with open(paths['csv'], 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['time', *columns])
    writer.writerows(zip(time.round(6), *(np.round(v, 5) for v in columns.values())))
  paths['TextGrid'].write_text(textgrid.format_textgrid(textgrid_tiers(result),
                                                        xmax=len(time) / hz))
  # Without a VA list the plot shows the model's VAD curves alone (no VA, no events).
  given = bool(result['events']) or 'vad' not in result
  curves = {k: result[k] for k in (*CURVES, 'envelope') if k in result}
  title = str(legend.get('file', stem))
  subtitle = ', '.join(f'{k}: {legend[k]}' for k in ('model', 'checkpoint') if legend.get(k))
  paths['png'] = plots.pages(
      {**curves, **({'va': result['va']} if given else {})}, result['events'], frame_hz=hz,
      stem_path=directory / stem, title=title, subtitle=subtitle,
      va_label='voice activity and events' if given else
      'model VAD (curves; no VA given, so no events)')
  paths['html'] = viewer.write_html(result, directory / f'{stem}.html', audio=audio,
                                    legend=legend)
  return paths


def written_paths(written: dict[str, Any]) -> list[pathlib.Path]:
  """`write`'s paths in a flat list (the pages in order)."""
  return [p for v in written.values() for p in (v if isinstance(v, list) else [v])]


def legend_of(config, source: str) -> dict[str, str]:
  """What the plots and pages name as the model and checkpoint."""
  m = config.model
  return {'model': f'{m.kind} VAP, {m.encoder.name} encoder, {m.vap.head} head, dim {m.dim}, '
                   f'{m.frame_hz} Hz', 'checkpoint': source}


def output_names(files: Sequence[pathlib.Path]) -> dict[pathlib.Path, str]:
  """Each audio file's output name: its stem, or its whole file name where stems clash (x.wav and
  x.flac write x.wav.json and x.flac.json, never both x.json), so no two inputs write the same
  outputs. Names are compared ignoring case (as macOS and Windows file systems do) and a page
  number (`x.p01`, `plots.page_paths`)."""
  files = [pathlib.Path(f) for f in files]
  names = {f: f.stem for f in files}
  while True:
    keys = collections.Counter(re.sub(r'\.p\d+$', '', n.casefold()) for n in names.values())
    clashing = [f for f, n in names.items()
                if keys[re.sub(r'\.p\d+$', '', n.casefold())] > 1 and n != f.name]
    if not clashing:
      return names
    names.update({f: f.name for f in clashing})


def _check_outputs(files: Sequence[pathlib.Path], names: dict, output: pathlib.Path) -> None:
  """Refuses an output folder where a prediction would overwrite one of the inputs: an audio file,
  or the VA list or TextGrid beside one (e.g. `--output` = the recordings' folder)."""
  written = {(output / f'{n}.{ext}').resolve() for n in names.values()
             for ext in ('json', 'csv', 'TextGrid', 'html', 'png')}
  for path in files:
    for beside in (path, *va_files.candidates_beside(path)):
      if beside.exists() and beside.resolve() in written:
        raise errors.UserError(f'--output={output}: predicting {path.name} there would overwrite '
                               f'{beside}; choose another --output')


def predict_files(model: ModelState, config, files, va_list=None, output='predictions', *,
                  source: str = '', index: bool = False, beside: bool = False,
                  tiers: Sequence[str] | None = None) -> None:
  """Predicts the audio `files` with `model` and writes each one's outputs to `output` under its
  `output_names` name (legends naming `source`, the model's checkpoint; with `index`, an
  index.html linking every page). A VA list: `va_list` (one file), or with `beside` the VA list or
  TextGrid beside each file where there is one (`va_files.read_va_beside`, `tiers` naming a
  TextGrid's speaker tiers). Prints a line per file on stdout under a progress bar; a file that
  fails (a user error: unreadable audio, a bad VA list) is reported in one line on stderr and the
  others go on; InputError at the end naming the files that failed."""
  files, output = [pathlib.Path(f) for f in files], pathlib.Path(output)
  names = output_names(files)
  _check_outputs(files, names, output)
  legend, pages, failed = legend_of(config, source), [], []
  bar = progress.bar(files, desc='predict', unit='file', enabled=len(files) > 1)
  for path in bar:
    try:
      va, va_path = va_list, None
      if beside and va_files.has_va_beside(path):
        va, va_path = va_files.read_va_beside(path, tiers=tiers)
      notice_rate(path)
      result = predict_file(model, config, path, va, progress_desc=path.name)
      written = write(result, output, names[path], audio=path, legend={'file': path, **legend})
    except errors.UserError as err:
      if len(files) == 1:
        raise
      failed.append(path)
      bar.write(f'error: {err} (skipped)', file=sys.stderr)
      continue
    pages.append(viewer.index_entry(written['html'], result))
    events = event_list(result['events'], config.model.frame_hz)
    heard = f', VA from {va_path.name}' if va_path else ''
    bar.write(f'{path}: {len(result["va"])} frames{heard}, {len(events)} events -> '
              + ', '.join(map(str, written_paths(written))), file=sys.stdout)
  bar.close()
  if index and pages:
    print(f'index: {viewer.write_index(pages, output / "index.html")}')
  if failed:
    raise errors.InputError(f'{len(failed)} of {len(files)} files failed (' +
                            ', '.join(p.name for p in failed) + f'; see above); the other '
                            f'{len(files) - len(failed)} were written to {output}')
  if len(files) > 1:
    print(f'{len(files)} files predicted -> {output}')
