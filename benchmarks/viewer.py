"""The viewer page on a 1-hour prediction in headless Chromium: time to open, time to redraw a zoom.

  python benchmarks/viewer.py [--frames=180000] [--repeats=3]
  python benchmarks/viewer.py --screenshot=PAGE.html [--png=docs/viewer.png] [--view=START,SPAN]

Generated frames (tests/viewer_results.py: an hour at 50 Hz of talk spurts, events, curves) with
an hour of stereo 16 kHz WAV referenced beside the page (not embedded), opened from a file:// URL
in Debian's chromium (tests/browser.py). Measured in the page with the performance API:
- open: navigation start to the end of the first full draw (the `convssl-ready` mark), per load;
- zoom: from `plot.zoom()` (in 2x steps from the whole hour to 2 s and back) to the end of the
  drawing in the next animation frame (`frame_ms`), to the frame after it, by which the redrawn
  one has been painted (`painted_ms`, the user's wait), and the drawing alone (`draw_ms`).
Prints one JSON line and appends a row to benchmarks/RESULTS.md.

--screenshot instead opens a page, sets the view (seconds), puts the cursor in its middle and saves
a PNG of the browser window (docs/viewer.png comes from this; the command is in README.md).
"""

import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import soundfile as sf
from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import results  # noqa: E402
from convssl_jax import viewer  # noqa: E402
from tests import browser, viewer_results  # noqa: E402

flags.DEFINE_integer('frames', 180_000, 'Frames of the prediction (50 Hz).')
flags.DEFINE_integer('repeats', 3, 'Page loads (each one times the open and the zoom steps).')
flags.DEFINE_string('screenshot', None, 'A viewer page to photograph instead of benchmarking.')
flags.DEFINE_string('png', 'docs/viewer.png', 'With --screenshot: where the PNG goes.')
flags.DEFINE_string('view', None, 'With --screenshot: START,SPAN in seconds (default: all).')
flags.DEFINE_integer('width', 1400, 'Browser window width (CSS pixels).')
flags.DEFINE_integer('height', 900, 'Browser window height.')
FLAGS = flags.FLAGS
HZ = 50

# Zooms in by 2 from the whole recording down to 2 s, then back out; times each redraw.
ZOOM_STEPS = '''
const done = arguments[arguments.length - 1], plot = viewer.plot, out = [];
const frame = () => new Promise(resolve => requestAnimationFrame(resolve));
(async () => {
  await frame();
  const steps = [];
  for (let span = plot.view.span; span > 2; span /= 2) steps.push(0.5);
  steps.push(...steps.map(() => 2));
  for (const factor of steps) {
    const draws = plot.draws;
    performance.mark('zoom');
    plot.zoom(factor, plot.view.start + plot.view.span / 3);
    await frame();  // the plot's own callback, queued first, has drawn by now
    if (plot.draws !== draws + 1) throw new Error('the zoom did not redraw once');
    const frame_ms = performance.measure('zoom-frame', 'zoom').duration;
    await frame();  // the next frame: the redrawn one has been painted
    out.push({span: plot.view.span, draw_ms: plot.lastDrawMs, frame_ms,
              painted_ms: performance.measure('zoom-painted', 'zoom').duration});
  }
  return out;
})().then(done, err => done({error: String(err)}));
'''


def _hour_audio(path: pathlib.Path, va: np.ndarray) -> None:
  """Stereo int16 WAV at 16 kHz as long as `va` [T, 2]: noise where each speaker talks (written
  a minute at a time)."""
  rng = np.random.default_rng(0)
  hop = 16000 // HZ
  with sf.SoundFile(path, 'w', 16000, 2, 'PCM_16') as f:
    for start in range(0, len(va), 60 * HZ):
      gain = np.repeat(va[start:start + 60 * HZ], hop, axis=0) * 0.2 + 0.002
      f.write((gain * rng.standard_normal(gain.shape)).astype(np.float32))


def _wait(driver, script: str, timeout: float = 120.0):
  end = time.monotonic() + timeout
  while not (value := driver.execute_script(script)):
    if time.monotonic() > end:
      raise TimeoutError(script)
    time.sleep(0.02)
  return value


def _chromium_version() -> str:
  binary = next(filter(None, map(shutil.which, browser.CHROMIUM)))
  return subprocess.run([binary, '--version'], capture_output=True, text=True,
                        check=False).stdout.strip()


def benchmark(root: pathlib.Path) -> dict:
  result = viewer_results.generated(FLAGS.frames)
  _hour_audio(root / 'hour.wav', result['va'])
  start = time.perf_counter()
  page = viewer.write_html(result, root / 'hour.html', audio=root / 'hour.wav',
                           legend={'file': 'generated', 'model': 'none', 'checkpoint': 'none'})
  write_s = time.perf_counter() - start
  driver = browser.start(root / 'profile', FLAGS.width, FLAGS.height)
  opens, zooms = [], []
  try:
    driver.set_script_timeout(300)
    for _ in range(FLAGS.repeats):
      driver.get('about:blank')
      driver.get(page.as_uri())
      _wait(driver, 'return window.viewer && window.viewer.ready')
      opens.append(driver.execute_script(
          'return performance.getEntriesByName("convssl-ready")[0].startTime'))
      steps = driver.execute_async_script(ZOOM_STEPS)
      if isinstance(steps, dict):
        raise RuntimeError(steps['error'])
      zooms.extend(steps)
    errors = browser.console_errors(driver)
    audio_src = driver.execute_script('return viewer.audio.getAttribute("src")')
  finally:
    driver.quit()
  if errors:
    raise RuntimeError(f'console errors: {errors}')
  return {'benchmark': 'viewer', 'frames': FLAGS.frames, 'hours': FLAGS.frames / HZ / 3600,
          'page_mb': round(page.stat().st_size / 2**20, 2), 'audio': audio_src,
          'write_s': round(write_s, 2), 'browser': _chromium_version(), 'cpus': os.cpu_count(),
          'load_average': round(os.getloadavg()[0], 2),
          'window': [FLAGS.width, FLAGS.height], 'loads': FLAGS.repeats,
          'open_ms': [round(x) for x in opens], 'open_ms_max': round(max(opens)),
          'zoom_steps': len(zooms),
          **{f'zoom_{key}_{stat}': round(float(fn([z[key] for z in zooms])), 1)
             for key in ('draw_ms', 'frame_ms', 'painted_ms')
             for stat, fn in (('median', np.median), ('max', np.max))}}


def screenshot(page: pathlib.Path, png: pathlib.Path, root: pathlib.Path) -> None:
  driver = browser.start(root / 'profile', FLAGS.width, FLAGS.height)
  try:
    driver.get(page.resolve().as_uri())
    _wait(driver, 'return window.viewer && window.viewer.ready')
    start, span = map(float, FLAGS.view.split(',')) if FLAGS.view else (0, 1e9)
    driver.execute_script(f'''
        const plot = viewer.plot;
        plot.setView({start}, {span});
        plot.onSeek(plot.view.start + plot.view.span / 2);
        plot.draw();''')
    _wait(driver, 'return new Promise(r => requestAnimationFrame(() => r(true)))')
    height = driver.execute_script('return document.documentElement.scrollHeight')
    driver.execute_cdp_cmd('Emulation.setDeviceMetricsOverride', {  # the viewport: all the page
        'width': FLAGS.width, 'height': height, 'deviceScaleFactor': 1, 'mobile': False})
    _wait(driver, 'return new Promise(r => requestAnimationFrame(() => r(true)))')
    errors = browser.console_errors(driver)
    if errors:
      raise RuntimeError(f'console errors: {errors}')
    png.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(png))
  finally:
    driver.quit()
  print(f'{png}: {page} ({FLAGS.view or "all"})')


def main(_):
  if reason := browser.unavailable():
    raise app.UsageError(reason)
  with tempfile.TemporaryDirectory(prefix='viewer-bench-') as tmp:
    if FLAGS.screenshot:
      if not pathlib.Path(FLAGS.screenshot).is_file():
        raise app.UsageError(f'--screenshot={FLAGS.screenshot}: no such page')
      screenshot(pathlib.Path(FLAGS.screenshot), pathlib.Path(FLAGS.png), pathlib.Path(tmp))
      return
    results.record('viewer', benchmark(pathlib.Path(tmp)), packages=('selenium', 'numpy'))


if __name__ == '__main__':
  app.run(main)
