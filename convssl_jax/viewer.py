"""An interactive page of a prediction: one self-contained HTML file that works offline.

`write_html` turns predict's result (per-frame curves, VA, envelope, event masks) into a page
that plays the recording with the curves scrolling under it: both waveforms, each speaker's VA
(or the model's VAD >= 0.5 without a VA list), the events, the next-speaker, backchannel and VAD
curves, a cursor that follows playback, click-to-seek, zoom and scroll. Everything is inline (no
CDN, no network): the page's script (web/plot.js, shared with any live page, and web/viewer.js),
its style, and the frames as base64 of gzip of uint8 (probabilities x 255; 1/255 is finer than a
pixel). The browser builds a min/max pyramid per curve once, so a redraw costs the same at any zoom
on a recording of hours. The audio is embedded when small and referenced beside the page when not
(`audio_source`). `write_index` writes a folder's index page.
"""

import base64
import gzip
import html
import json
import os
import pathlib
import string
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import soundfile as sf

from convssl_jax.data import audio as audio_lib

WEB = pathlib.Path(__file__).parent / 'web'
# Audio up to this size is embedded in the page (a data: URI, 4/3 its size as base64): the page
# alone is then enough (4.4 min of 16 kHz stereo 16-bit WAV; longer compressed). Larger audio is
# referenced by its path relative to the page, so the page stays quick to open; the two move
# together.
EMBED_MAX_BYTES = 16 * 2**20
# What browsers play (Chromium, Firefox, Safari), by soundfile's format and subtype; other audio
# (SPHERE, AIFF, u-law WAV ...) gets a FLAC copy.
BROWSER_AUDIO = {'WAV': ('audio/wav', {'PCM_U8', 'PCM_16', 'PCM_24', 'PCM_32', 'FLOAT'}),
                 'FLAC': ('audio/flac', None), 'OGG': ('audio/ogg', {'VORBIS', 'OPUS'}),
                 'MP3': ('audio/mpeg', None)}
CURVES = ('p', 'p_now', 'p_future', 'p_bc', 'vad')
EVENT_ORDER = ('shift', 'hold', 'short', 'long', 'pred_shift', 'pred_shift_neg', 'pred_bc',
               'pred_bc_neg')


def _quantize(name: str, values: np.ndarray) -> np.ndarray:
  """[0, 1] -> uint8 0..255 (rounded); a non-finite value is a bug upstream, not drawn."""
  values = np.asarray(values, np.float32)
  if not np.isfinite(values).all():
    raise ValueError(f'{name}: non-finite values cannot be drawn')
  return np.rint(np.clip(values, 0, 1) * 255).astype(np.uint8)


def tracks(result: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """The page's per-frame tracks ({name: uint8 [T]}, names `<key>_A`/`<key>_B`) and what the page
  needs to lay them out (`va_label`, the `events` that occur, in EVENT_ORDER)."""
  frames = len(result['va'])
  # Without a VA list, as predict's PNG: the model's own VAD (>= 0.5) as the voice activity.
  use_vad = not result['events'] and 'vad' in result
  per_speaker = {'va': np.asarray(result['vad']) >= 0.5 if use_vad else result['va']}
  if 'envelope' in result:
    envelope = np.asarray(result['envelope'], np.float32)
    per_speaker['envelope'] = envelope / max(float(envelope.max(initial=0)), 1e-9)
  per_speaker.update({k: result[k] for k in CURVES if k in result})
  events = [k for k in (*EVENT_ORDER, *sorted(set(result['events']) - set(EVENT_ORDER)))
            if k in result['events'] and np.asarray(result['events'][k])[:frames].any()]
  per_speaker.update({k: np.asarray(result['events'][k])[:frames] for k in events})
  out = {}
  for key, values in per_speaker.items():
    if np.shape(values) != (frames, 2):
      raise ValueError(f'{key}: shape {np.shape(values)}, not [{frames}, 2] as va')
    for i, speaker in enumerate('AB'):
      out[f'{key}_{speaker}'] = _quantize(key, values[:, i])
  return out, {'va_label': 'model VAD ≥ 0.5' if use_vad else 'voice activity', 'events': events}


def _browser_mime(path: pathlib.Path) -> str | None:
  """The MIME type of an audio file browsers play, else None."""
  try:
    info = sf.info(str(path))
  except (RuntimeError, OSError):
    return None
  mime, subtypes = BROWSER_AUDIO.get(info.format, (None, None))
  return mime if mime and (subtypes is None or info.subtype in subtypes) else None


def _relative_url(target: pathlib.Path, page: pathlib.Path) -> str:
  try:
    return urllib.parse.quote(pathlib.Path(os.path.relpath(target.resolve(),
                                                           page.resolve().parent)).as_posix())
  except ValueError:  # another drive (Windows)
    return target.resolve().as_uri()


def audio_source(audio, page, embed_max_bytes: int = EMBED_MAX_BYTES) -> tuple[str, str]:
  """(src, description) of `audio` for the page at `page`: the file's bytes as a data: URI when
  a browser plays its format and it is at most `embed_max_bytes`, else its path relative to the
  page. Audio browsers do not play (SPHERE, AIFF ...) is first copied to 16-bit FLAC at its own
  rate, `<page stem>.viewer.flac` beside the page, which the same rule embeds (and deletes) or
  references. Memory stays bounded whatever the recording's length: the copy is made block by
  block, and only audio up to `embed_max_bytes` is read whole."""
  source, page = pathlib.Path(audio), pathlib.Path(page)
  path, mime = source, _browser_mime(source)
  if mime is None:
    path, mime = _flac_copy(source, page.with_suffix('.viewer.flac')), 'audio/flac'
  how = '' if path == source else ' as FLAC'
  size = path.stat().st_size
  if size <= embed_max_bytes:
    data = _data_uri(path.read_bytes(), mime)
    if path != source:
      path.unlink()
    return data, f'{source.name} (embedded{how})'
  return (_relative_url(path, page),
          f'{source}{how} (beside the page: {size / 2**20:.0f} MB, over the '
          f'{embed_max_bytes / 2**20:g} MB embedded at most)')


def _flac_copy(source: pathlib.Path, target: pathlib.Path) -> pathlib.Path:
  """`source` as 16-bit FLAC at `target`, a block at a time."""
  try:
    with sf.SoundFile(str(source)) as f, sf.SoundFile(
        str(target), 'w', f.samplerate, f.channels, 'PCM_16', format='FLAC') as out:
      for block in f.blocks(blocksize=2**16, dtype='int16'):
        out.write(block)
  except (RuntimeError, OSError) as err:  # soundfile's LibsndfileError and friends
    target.unlink(missing_ok=True)
    raise audio_lib.AudioError(f'{source}: cannot decode audio ({err})') from err
  return target


def _data_uri(data: bytes, mime: str) -> str:
  return f'data:{mime};base64,{base64.b64encode(data).decode("ascii")}'


def _clock(seconds: float) -> str:
  minutes, s = divmod(round(seconds), 60)
  hours, minutes = divmod(minutes, 60)
  return f'{hours}:{minutes:02d}:{s:02d}' if hours else f'{minutes}:{s:02d}'


def page(title: str, body: str) -> str:
  """An HTML page (web/page.html) with the viewer's style, `title` (text) and `body` (HTML)."""
  return string.Template((WEB / 'page.html').read_text()).substitute(
      title=html.escape(title), style=(WEB / 'viewer.css').read_text(), body=body)


def write_html(result: Mapping[str, Any], path, *, audio=None,
               legend: Mapping[str, Any] | None = None,
               embed_max_bytes: int = EMBED_MAX_BYTES) -> pathlib.Path:
  """The viewer page of predict's `result` at `path`: `audio` (the recording; None: a page
  without sound) embedded or referenced (`audio_source`), `legend` ({'file', 'model',
  'checkpoint', ...}: shown as given, in order)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  by_name, layout = tracks(result)
  hz, frames = result['frame_hz'], len(result['va'])
  legend = {k: str(v) for k, v in (legend or {}).items()}
  title = pathlib.Path(legend['file']).name if 'file' in legend else path.stem
  src, described = audio_source(audio, path, embed_max_bytes) if audio else ('', 'none')
  legend.update(frames=f'{frames} at {hz} Hz ({_clock(frames / hz)})', audio=described)
  packed = gzip.compress(b''.join(v.tobytes() for v in by_name.values()), 6, mtime=0)
  meta = {'frame_hz': hz, 'frames': frames, 'tracks': list(by_name), **layout}
  body = string.Template((WEB / 'viewer.html').read_text()).substitute(
      legend='\n'.join(f'<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>'
                       for k, v in legend.items()),
      audio_src=f' src="{html.escape(src)}"' if src else '',
      meta=json.dumps(meta).replace('</', '<\\/'),
      frames=base64.encodebytes(packed).decode('ascii'),
      plot_js=(WEB / 'plot.js').read_text(), viewer_js=(WEB / 'viewer.js').read_text())
  path.write_text(page(title, body), encoding='utf-8')
  return path


def event_counts(events: Mapping[str, np.ndarray]) -> dict[str, int]:
  """How many times each event occurs (runs of True in its masks [T, 2], both speakers)."""
  return {name: int(np.count_nonzero(np.diff(np.asarray(mask, np.int8), axis=0, prepend=0) == 1))
          for name, mask in events.items()}


def index_entry(page, result: Mapping[str, Any]) -> dict[str, Any]:
  """What the folder index shows of one page (keep this, not the result, for `write_index`)."""
  return {'page': pathlib.Path(page), 'seconds': len(result['va']) / result['frame_hz'],
          'events': event_counts(result['events'])}


def write_index(entries: Iterable[Mapping[str, Any]], path) -> pathlib.Path:
  """`path`: a table linking every page of `entries` (`index_entry`s) with its duration and its
  event counts."""
  path = pathlib.Path(path)
  entries = list(entries)
  names = {n for e in entries for n in e['events']}
  columns = [n for n in EVENT_ORDER if n in names] + sorted(names - set(EVENT_ORDER))
  rows = [f'<tr><td><a href="{html.escape(_relative_url(e["page"], path))}">'
          f'{html.escape(e["page"].stem)}</a></td><td>{_clock(e["seconds"])}</td>'
          + ''.join(f'<td>{e["events"].get(n, "")}</td>' for n in columns) + '</tr>'
          for e in entries]
  header = ''.join(f'<th>{html.escape(n)}</th>' for n in ('file', 'duration', *columns))
  body = ('<p class="help">Each file\'s page plays it with the model\'s curves; the counts are its '
          'turn-taking events (with a VA list).</p>\n'
          f'<table>\n<thead><tr>{header}</tr></thead>\n<tbody>\n' + '\n'.join(rows)
          + '\n</tbody>\n</table>')
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(page(f'{path.parent.name or "predictions"}: {len(entries)} files', body),
                  encoding='utf-8')
  return path
