"""The viewer page's file: every frame of every curve, the audio embedded or beside it, nothing
fetched from the network, the folder index (the page in a browser: test_viewer_browser.py)."""

import base64
import gzip
import json
import re
import textwrap
import urllib.parse

import numpy as np
import pytest
import soundfile as sf

from convssl_jax import predict, viewer
from tests import processes, viewer_results

HZ = 50


@pytest.fixture(scope='module')
def dialog():
  return viewer_results.dialog(seed=3, seconds=12.0)


def page_frames(page) -> tuple[dict, dict[str, np.ndarray]]:
  """(meta, {track: uint8 [T]}) as the page carries them."""
  text = page.read_text()
  meta = json.loads(re.search(r'id="convssl-meta">(.*?)</script>', text, re.S).group(1))
  packed = re.search(r'id="convssl-frames">(.*?)</script>', text, re.S).group(1)
  data = np.frombuffer(gzip.decompress(base64.b64decode(packed)), np.uint8)
  frames = meta['frames']
  return meta, {name: data[i * frames:(i + 1) * frames] for i, name in enumerate(meta['tracks'])}


def audio_src(page) -> str:
  return re.search(r'<audio [^>]*src="([^"]*)"', page.read_text()).group(1)


def test_the_page_carries_every_frame_of_every_curve_to_the_nearest_255th(dialog, tmp_path):
  result, _ = dialog
  meta, tracks = page_frames(viewer.write_html(result, tmp_path / 'd.html'))
  assert meta['frame_hz'] == HZ and meta['frames'] == len(result['va']) == 600
  expected = {'va': result['va'], 'p_now': result['p_now'], 'p_future': result['p_future'],
              'p_bc': result['p_bc'], 'vad': result['vad'],
              'envelope': result['envelope'] / result['envelope'].max()}
  expected.update({k: v.astype(np.float32) for k, v in result['events'].items() if v.any()})
  assert set(tracks) == {f'{k}_{s}' for k in expected for s in 'AB'}
  for key, values in expected.items():
    for i, s in enumerate('AB'):
      # Within half a step of 1/255 of the float value: rounding, not truncation.
      np.testing.assert_array_less(np.abs(tracks[f'{key}_{s}'] / 255 - values[:, i]),
                                   0.5 / 255 + 1e-7, err_msg=f'{key}_{s}')
  assert meta['events'] == [k for k in viewer.EVENT_ORDER if result['events'][k].any()]
  assert meta['va_label'] == 'voice activity'


def test_without_a_va_list_the_voice_activity_drawn_is_the_models_vad(dialog, tmp_path):
  result, _ = dialog
  no_va = {**result, 'events': {}, 'va': np.zeros_like(result['va'])}
  meta, tracks = page_frames(viewer.write_html(no_va, tmp_path / 'd.html'))
  assert meta['va_label'].startswith('model VAD') and meta['events'] == []
  for i, s in enumerate('AB'):
    np.testing.assert_array_equal(tracks[f'va_{s}'], np.where(result['vad'][:, i] >= 0.5, 255, 0))


def test_the_page_asks_nothing_of_the_network(dialog, tmp_path):
  result, audio = dialog
  sf.write(tmp_path / 'd.wav', audio, 16000)
  text = viewer.write_html(result, tmp_path / 'd.html', audio=tmp_path / 'd.wav').read_text()
  assert not re.search(r'\b(https?|wss?|ftp)://|//[a-z0-9.-]+\.[a-z]{2,}/', text, re.I)
  assert not re.search(r'<(script|link|img|iframe)[^>]+(src|href)=', text)  # all of it inline


def test_small_audio_is_embedded_as_it_is_and_large_audio_is_referenced_from_the_page(
    dialog, tmp_path):
  result, audio = dialog
  wav = tmp_path / 'recordings' / 'd one.wav'
  wav.parent.mkdir()
  sf.write(wav, audio, 16000, subtype='PCM_16')
  embedded = viewer.write_html(result, tmp_path / 'pages' / 'a.html', audio=wav)
  prefix = 'data:audio/wav;base64,'
  assert audio_src(embedded).startswith(prefix)
  assert base64.b64decode(audio_src(embedded)[len(prefix):]) == wav.read_bytes()
  page = viewer.write_html(result, tmp_path / 'pages' / 'b.html', audio=wav,
                           embed_max_bytes=wav.stat().st_size - 1)
  src = audio_src(page)
  assert src == '../recordings/d%20one.wav'
  assert (page.parent / urllib.parse.unquote(src)).resolve() == wav.resolve()


def test_audio_a_browser_cannot_play_becomes_a_flac_copy_of_the_same_samples(dialog, tmp_path):
  result, audio = dialog
  aiff = tmp_path / 'd.aiff'
  sf.write(aiff, audio[::2], 8000, subtype='PCM_16')
  page = viewer.write_html(result, tmp_path / 'd.html', audio=aiff, embed_max_bytes=1000)
  assert audio_src(page) == 'd.viewer.flac'
  copy, rate = sf.read(tmp_path / 'd.viewer.flac', dtype='int16')
  original, _ = sf.read(aiff, dtype='int16')
  assert rate == 8000  # its own rate: browsers resample
  np.testing.assert_array_equal(copy, original)
  small = viewer.write_html(result, tmp_path / 'e.html', audio=aiff)
  prefix = 'data:audio/flac;base64,'
  assert audio_src(small).startswith(prefix) and not (tmp_path / 'e.viewer.flac').exists()
  assert base64.b64decode(audio_src(small)[len(prefix):]) == (tmp_path / 'd.viewer.flac').read_bytes()


def test_copying_audio_for_the_page_takes_memory_bounded_whatever_its_length(tmp_path):
  """A child process under an address-space limit 48 MB above what it holds after its imports
  copies 10 minutes of AIFF (decoded whole as float32 it would need 77 MB more)."""
  rng = np.random.default_rng(0)
  aiff = tmp_path / 'long.aiff'
  with sf.SoundFile(aiff, 'w', 16000, 2, 'PCM_16', format='AIFF') as f:
    for _ in range(10):
      f.write((rng.standard_normal((60 * 16000, 2)) * 3000).astype(np.int16))
  script = textwrap.dedent(f"""
      import re, resource, sys
      from convssl_jax import viewer
      held = int(re.search(r'VmSize:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1))
      limit = (held + 48 * 1024) * 1024
      resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
      src, _ = viewer.audio_source({str(aiff)!r}, {str(tmp_path / 'long.html')!r})
      print(src)
      """)
  done = processes.run('-c', script, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  assert done.stdout.strip() == 'long.viewer.flac'
  with sf.SoundFile(aiff) as original, sf.SoundFile(tmp_path / 'long.viewer.flac') as copy:
    assert copy.frames == original.frames == 10 * 60 * 16000
    for a, b in zip(original.blocks(2**20, dtype='int16'), copy.blocks(2**20, dtype='int16')):
      np.testing.assert_array_equal(a, b)


def test_the_legend_names_the_file_model_and_checkpoint_escaped(dialog, tmp_path):
  result, _ = dialog
  legend = {'file': 'in/<b>d.wav', 'model': 'stereo VAP, cpc encoder', 'checkpoint': 'w (best, 7)'}
  text = viewer.write_html(result, tmp_path / 'd.html', legend=legend).read_text()
  assert '<title>&lt;b&gt;d.wav</title>' in text
  for key, value in legend.items():
    assert f'<dt>{key}</dt><dd>{value.replace("<", "&lt;").replace(">", "&gt;")}</dd>' in text
  assert '<dt>frames</dt><dd>600 at 50 Hz (0:12)</dd>' in text
  assert '<dt>audio</dt><dd>none</dd>' in text


@pytest.mark.parametrize('key, values, message', [
    ('p_bc', np.full((600, 2), np.nan, np.float32), 'p_bc: non-finite'),
    ('p_now', np.zeros((599, 2), np.float32), r'p_now: shape \(599, 2\), not \[600, 2\]'),
])
def test_curves_that_cannot_be_drawn_are_refused_naming_them(dialog, tmp_path, key, values,
                                                            message):
  result, _ = dialog
  with pytest.raises(ValueError, match=message):
    viewer.write_html({**result, key: values}, tmp_path / 'd.html')


def test_the_index_links_every_page_with_its_event_counts(dialog, tmp_path):
  result, _ = dialog
  other = viewer_results.dialog(seed=4, seconds=20.0)[0]
  entries = [viewer.index_entry(viewer.write_html(r, tmp_path / 'pages' / f'{n}.html'), r)
             for n, r in (('a', result), ('b', other))]
  text = viewer.write_index(entries, tmp_path / 'index.html').read_text()
  rows = re.findall(r'<tr><td><a href="([^"]+)">([^<]+)</a></td><td>([^<]+)</td>(.*?)</tr>',
                    text)
  header = re.findall(r'<th>([^<]+)</th>', text)
  assert header[:2] == ['file', 'duration']
  assert [r[:3] for r in rows] == [('pages/a.html', 'a', '0:12'), ('pages/b.html', 'b', '0:20')]
  for (_, _, _, cells), r in zip(rows, (result, other)):
    counts = dict(zip(header[2:], re.findall(r'<td>(\d*)</td>', cells)))
    listed = [e['event'] for e in predict.event_list(r['events'], HZ)]  # an independent count
    assert counts == {name: str(listed.count(name)) for name in header[2:]}
    assert sum(map(int, counts.values())) == len(listed) > 0
