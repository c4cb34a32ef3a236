"""The live page of `run.py --mode=serve` in a real browser: headless Chromium (tests/browser.py)
with Chromium's fake media devices, its microphone a WAV file. Speaker A from the page's
microphone with a partner recording as B, and a recording streamed as if live: the frames the page
receives equal offline predict of the same audio (the session's recording, what the model heard)
within 1e-4; the microphone's audio is the fake device's file; the bar, meters and latency show.
The server is the real command in a child process on the `tiny` model of `tiny_run`. Skipped,
with the reason, where Chromium or chromedriver is missing.

With CONVSSL_SCREENSHOT=PATH the microphone test streams 12 s (not 3) and saves its screenshot
there; CONVSSL_SCREENSHOT_RUN=WORKDIR (a trained `tiny` run) replaces the 4-step model and
CONVSSL_SCREENSHOT_DIALOG=WAV (stereo) gives the microphone its channel A and the partner its
channel B (docs/serve.png: README "Live in the browser")."""

import os
import re
import shutil

import numpy as np
import pytest
import soundfile as sf
from scipy import signal

from convssl_jax import predict, trainer
from tests import browser, processes, test_serve
from tests.browser import wait_for

RATE = 16000
CURVES = test_serve.CURVES
CONTEXT_S = 20  # the server's attention, and predict's one window: equal for sessions under 20 s
SCREENSHOT = os.environ.get('CONVSSL_SCREENSHOT')


@pytest.fixture(scope='module')
def recordings(tmp_path_factory):
  """A folder with the partner and the dialog the server offers, and the fake microphone's WAV."""
  root = tmp_path_factory.mktemp('serve_browser')
  (root / 'recordings').mkdir()
  microphone, partner = test_serve.speech_like(3.0, 1, 11), test_serve.speech_like(5.0, 1, 2)
  if dialog := os.environ.get('CONVSSL_SCREENSHOT_DIALOG'):
    wave = sf.read(dialog, dtype='float32')[0][:20 * RATE]
    microphone, partner = wave[:, :1], wave[:, 1:]
  sf.write(root / 'recordings' / 'partner.wav', partner, RATE, subtype='PCM_16')
  sf.write(root / 'recordings' / 'dialog.wav', test_serve.speech_like(2.5, 2, 1), RATE,
           subtype='PCM_16')
  sf.write(root / 'microphone.wav', microphone, RATE, subtype='PCM_16')
  return root


@pytest.fixture(scope='module')
def live(tiny_run, recordings, tmp_path_factory):
  """(the page's URL, output folder, the ModelState, config) of `run.py --mode=serve`."""
  if reason := browser.unavailable():
    pytest.skip(f'browser test: {reason}')
  config, workdir = tiny_run
  workdir = os.environ.get('CONVSSL_SCREENSHOT_RUN') or workdir
  output = recordings / 'out'
  server = processes.start('run.py', '--mode=serve', '--config=configs/vap.py:tiny',
                           f'--workdir={workdir}', f'--config.data.data_dir={config.data.data_dir}',
                           '--port=0', f'--audio={recordings / "recordings"}', f'--output={output}',
                           f'--context_s={CONTEXT_S}')
  try:
    lines = []
    for line in server.stderr:
      lines.append(line)
      if match := re.search(r'open (http://\S+)', line):
        break
    else:
      pytest.fail(f'the server did not start: {"".join(lines)[-3000:]}')
    model, config, _ = trainer.load(config, workdir=workdir)
    yield match.group(1), output, model, config
  finally:
    server.terminate()
    server.wait(30)


@pytest.fixture(scope='module')
def driver(recordings, tmp_path_factory):
  """Chromium whose microphone plays microphone.wav (looped), asked for no permission."""
  try:
    chromium = browser.start(tmp_path_factory.mktemp('live_profile'), extra_flags=(
        '--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream',
        f'--use-file-for-fake-audio-capture={recordings / "microphone.wav"}'))
  except Exception as err:  # pylint: disable=broad-except  # selenium's or the OS's: say which
    pytest.skip(f'browser test: chromium does not start here: {str(err).splitlines()[0]}')
  yield chromium
  chromium.quit()


def open_live(driver, url):
  driver.get('about:blank')
  browser.console_errors(driver)
  driver.get(url)
  wait_for(driver, 'return window.live && live.ready')


def received(driver) -> dict[str, np.ndarray]:
  return {k: np.array(v, np.float64) for k, v in driver.execute_script(
      'return live.frames').items()}


def assert_equal_to_predict(got, model, config, wav):
  """The frames equal offline predict of `wav` in one window of CONTEXT_S seconds."""
  config = config.copy_and_resolve_references()
  config.data.window_s = CONTEXT_S
  want = predict.predict_file(model, config, wav)
  assert len(got['vad']) == len(want['vad']) > 0
  for key in CURVES:
    np.testing.assert_allclose(got[key], want[key], atol=1e-4, err_msg=key)


def test_the_microphone_and_a_partner_live_give_offline_predicts_frames(driver, live,
                                                                         recordings, tmp_path):
  url, _, model, config = live
  open_live(driver, url)
  driver.execute_script('document.getElementById("input-b").value = "partner:partner.wav"')
  driver.find_element('id', 'start').click()
  seconds = 12 if SCREENSHOT else 3
  wait_for(driver, f'return (live.frames.vad || []).length >= {50 * seconds}', timeout=90)
  shot = tmp_path / 'serve.png'
  driver.save_screenshot(str(shot))
  status, bar, vad_a, last_p_future, last_vad = driver.execute_script(
      'const $ = id => document.getElementById(id);'
      'return [$("status").textContent, $("next-a").style.width, $("vad-a").value,'
      ' live.frames.p_future.at(-1), live.frames.vad.at(-1)]')
  driver.find_element('id', 'stop').click()
  done = wait_for(driver, 'return live.done', timeout=60)
  assert driver.execute_script('return live.closed && live.closed.code') == 1000
  errors = browser.console_errors(driver)
  assert errors == [], errors

  got = received(driver)
  assert len(got['vad']) == done['frames'] < (CONTEXT_S - 2) * 50
  wav = done['written'][0]
  assert_equal_to_predict(got, model, config, wav)
  # What the page showed when photographed: its last frame then, and the round trip.
  assert bar == f'{100 * last_p_future[0]:.1f}%'
  assert vad_a == pytest.approx(last_vad[0])
  assert re.search(r'round trip [\d.]+ ms \(median [\d.]+ ms, p99', status), status
  assert driver.execute_script('return live.rtt.length') > 0
  # The session's audio: B is the partner from its start; A is the fake microphone's file.
  heard = sf.read(wav, dtype='float32')[0]
  partner = sf.read(recordings / 'recordings' / 'partner.wav', dtype='float32')[0]
  np.testing.assert_array_equal(heard[:, 1], partner[:len(heard)])
  mic = sf.read(recordings / 'microphone.wav', dtype='float32')[0]
  assert best_match(heard[:, 0], mic) > 0.85
  other = test_serve.speech_like(3.0, 1, 99)[:, 0]
  assert best_match(heard[:, 0], other) < 0.3  # not any noise
  if SCREENSHOT:
    shutil.copy(shot, SCREENSHOT)


def best_match(heard: np.ndarray, source: np.ndarray) -> float:
  """The highest normalised correlation, over every lag, of the second second of `heard` with
  `source` (looped, as Chromium plays it), both band-limited to 200-5000 Hz: the browser's
  resampling cuts above about 6.5 kHz and its audio processing below 100 Hz. About 0.93 for the
  same audio, under 0.1 for other noise."""
  band = signal.butter(6, [200, 5000], 'bandpass', fs=RATE, output='sos')
  piece = signal.sosfiltfilt(band, heard)[RATE:2 * RATE]
  looped = signal.sosfiltfilt(band, np.concatenate([source] * 3))
  products = signal.correlate(looped, piece, mode='valid')
  energy = np.sqrt(np.convolve(looped**2, np.ones(len(piece)), mode='valid'))
  return float(np.max(products / (energy * np.linalg.norm(piece) + 1e-12)))


def test_a_recording_streamed_as_if_live_on_the_page_gives_offline_predicts_frames(
    driver, live, recordings):
  url, _, model, config = live
  open_live(driver, url)
  assert driver.execute_script(
      'return Array.from(document.getElementById("file").options, o => o.value)') == ['dialog.wav']
  driver.find_element('id', 'start-file').click()
  done = wait_for(driver, 'return live.done', timeout=60)
  assert browser.console_errors(driver) == []
  got = received(driver)
  assert len(got['vad']) == done['frames'] == 125
  assert_equal_to_predict(got, model, config, recordings / 'recordings' / 'dialog.wav')
  assert driver.execute_script('return live.series.vad_A.length') == 125  # drawn, every frame
