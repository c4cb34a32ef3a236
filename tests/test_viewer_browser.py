"""The viewer page in a real browser (headless Chromium, tests/browser.py): it opens offline from a
file:// URL without asking the network for anything, plays with the cursor following, seeks where
it is clicked, zooms by its buttons and the wheel around the pointer, draws from a correct min/max
pyramid, and logs no console errors; an hour of frames opens and zooms. Skipped, with the reason,
where Chromium or chromedriver is missing."""

import numpy as np
import pytest
import soundfile as sf

from convssl_jax import viewer
from tests import browser, viewer_results
from tests.browser import wait_for

HZ = 50


@pytest.fixture(scope='module')
def page(tmp_path_factory):
  """(page path, result) of a 12-s synthetic dialog with its audio embedded."""
  root = tmp_path_factory.mktemp('viewer_page')
  result, audio = viewer_results.dialog(seed=3, seconds=12.0)
  sf.write(root / 'd.wav', audio, 16000)
  legend = {'file': root / 'd.wav', 'model': 'none (curves made from the VA)', 'checkpoint': '-'}
  return viewer.write_html(result, root / 'd.html', audio=root / 'd.wav', legend=legend), result


def open_page(driver, path):
  """Opens the page fresh; returns the URLs asked for from its own on, and the console errors."""
  driver.get('about:blank')
  browser.requests(driver)  # drop what came before
  browser.console_errors(driver)
  driver.get(path.as_uri())
  wait_for(driver, 'return window.viewer && window.viewer.ready')
  wait_for(driver, 'return viewer.audio.readyState >= 1 || !viewer.audio.src')
  urls = browser.requests(driver)
  return urls[urls.index(path.as_uri()):], browser.console_errors(driver)


def test_the_page_opens_offline_and_draws_from_the_frames_it_carries(chromium, page):
  path, result = page
  urls, errors = open_page(chromium, path)
  assert errors == []
  assert all(u.split(':', 1)[0] in ('file', 'data', 'blob') for u in urls), urls
  assert chromium.execute_script('return document.getElementById("notice").hidden')
  assert chromium.execute_script('return viewer.plot.draws') >= 1
  # The frames the browser decoded, and every level of their min/max pyramid, against numpy.
  for name in ('p_now_A', 'p_bc_B', 'va_B', 'hold_B', 'short_A'):
    key, speaker = name.rsplit('_', 1)
    values = result['events'][key] if key in result['events'] else result[key]
    expected = np.rint(values[:, 'AB'.index(speaker)].astype(np.float32) * 255)
    levels = chromium.execute_script(f'''
        const s = viewer.series["{name}"], out = [];
        for (let k = 0; k <= s.pyramid.length; k++) {{
          const {{min, max, size}} = s.level(k);
          out.push([Array.from(min.subarray(0, size)), Array.from(max.subarray(0, size))]);
        }}
        return out;''')
    assert len(levels) == int(np.ceil(np.log2(len(expected)))) + 1
    for k, (low, high) in enumerate(levels):
      starts = np.arange(0, len(expected), 2**k)
      np.testing.assert_array_equal(low, np.minimum.reduceat(expected, starts), err_msg=f'{k}')
      np.testing.assert_array_equal(high, np.maximum.reduceat(expected, starts), err_msg=f'{k}')


def test_frames_appended_in_pieces_give_the_same_pyramid(chromium, page):
  """The shared plot module's Series.extend, as a live page appends frames as they come."""
  open_page(chromium, page[0])
  rng = np.random.default_rng(0)
  values = rng.integers(0, 256, 1000).tolist()
  same = chromium.execute_script('''
      const values = Uint8Array.from(arguments[0]), whole = new ConvsslPlot.Series(values);
      const pieces = new ConvsslPlot.Series();
      for (const [a, b] of [[0, 1], [1, 2], [2, 333], [333, 334], [334, 1000]]) {
        pieces.extend(values.subarray(a, b));
      }
      const same = (x, y) => x.length === y.length && x.every((v, i) => v === y[i]);
      return whole.pyramid.length === pieces.pyramid.length && [...Array(11).keys()].every(k => {
        const w = whole.level(k), p = pieces.level(k);
        return w.size === p.size && same(w.min.subarray(0, w.size), p.min.subarray(0, p.size))
          && same(w.max.subarray(0, w.size), p.max.subarray(0, p.size));
      });''', values)
  assert same


def test_it_plays_and_the_cursor_follows_the_audio(chromium, page):
  open_page(chromium, page[0])
  chromium.find_element('id', 'play').click()
  wait_for(chromium, 'return viewer.audio.currentTime > 0.5', timeout=20)
  chromium.find_element('id', 'play').click()  # pause
  wait_for(chromium, 'return viewer.audio.paused')
  played, cursor = chromium.execute_script('return [viewer.audio.currentTime, viewer.plot.cursor]')
  assert cursor == pytest.approx(played, abs=0.1)
  assert browser.console_errors(chromium) == []


def test_a_click_on_the_plot_seeks_the_audio_to_the_time_under_it(chromium, page):
  from selenium.webdriver.common.action_chains import ActionChains  # pylint: disable=import-outside-toplevel
  open_page(chromium, page[0])
  chromium.execute_script('viewer.plot.setView(2, 4)')
  overlay = chromium.find_element('css selector', '#plot canvas:last-child')
  left, width, height, client_width = chromium.execute_script(
      'const p = viewer.plot; return [p.left, p.width, p.height, p.overlay.clientWidth]')
  for share in (0.25, 0.8):
    x = round(left + share * width)
    ActionChains(chromium).move_to_element_with_offset(
        overlay, x - client_width // 2, 40 - height // 2).click().perform()
    wait_for(chromium, 'return !viewer.audio.seeking')
    expected = 2 + (x - left) / width * 4  # the view: 2 s to 6 s across the plot's width
    current, cursor = chromium.execute_script(
        'return [viewer.audio.currentTime, viewer.plot.cursor]')
    assert current == pytest.approx(expected, abs=4 / width)  # within a pixel
    assert cursor == pytest.approx(expected, abs=4 / width)
  assert browser.console_errors(chromium) == []


def test_zoom_buttons_halve_and_double_the_span_and_the_wheel_zooms_around_the_pointer(
    chromium, page):
  from selenium.webdriver.common.action_chains import ActionChains, ScrollOrigin  # pylint: disable=import-outside-toplevel
  open_page(chromium, page[0])
  view = lambda: chromium.execute_script('return viewer.plot.view')  # noqa: E731
  assert view() == {'start': 0, 'span': 12}
  chromium.find_element('id', 'zoom-in').click()
  assert view() == pytest.approx({'start': 3, 'span': 6})  # the middle stays
  chromium.find_element('id', 'zoom-in').click()
  chromium.find_element('id', 'zoom-out').click()
  assert view() == pytest.approx({'start': 3, 'span': 6})
  overlay = chromium.find_element('css selector', '#plot canvas:last-child')
  left, width, client_width, height = chromium.execute_script(
      'const p = viewer.plot; return [p.left, p.width, p.overlay.clientWidth, p.height]')
  x = round(left + 0.25 * width)
  before = 3 + (x - left) / width * 6  # the instant under the pointer
  ActionChains(chromium).scroll_from_origin(
      ScrollOrigin.from_element(overlay, x - client_width // 2, 30 - height // 2), 0, 100).perform()
  after = wait_for(chromium, 'return viewer.plot.view.span !== 6 && viewer.plot.view')
  assert after['span'] == pytest.approx(6 * np.exp(100 * 0.002))  # out, by e^(deltaY / 500)
  assert after['start'] + (x - left) / width * after['span'] == pytest.approx(before, abs=1e-6)
  wait_for(chromium, 'return new Promise(r => requestAnimationFrame(() => r(true)))')
  assert browser.console_errors(chromium) == []


def test_an_hour_of_frames_opens_and_zooms(chromium, tmp_path):
  """The benchmark's case (benchmarks/viewer.py times it); here only that it works."""
  result = viewer_results.generated(180_000)
  silence = tmp_path / 'silence.flac'  # its length does not matter here
  sf.write(silence, np.zeros((16000, 2), np.int16), 16000)
  path = viewer.write_html(result, tmp_path / 'hour.html', audio=silence, embed_max_bytes=0)
  urls, errors = open_page(chromium, path)
  assert errors == [] and silence.as_uri() in urls  # referenced, not embedded
  assert chromium.execute_script('return [viewer.meta.frames, viewer.plot.duration()]') == [
      180_000, 3600]
  for _ in range(6):
    chromium.find_element('id', 'zoom-in').click()
  span, draws = chromium.execute_script(
      'viewer.plot.draw(); return [viewer.plot.view.span, viewer.plot.draws]')
  assert span == pytest.approx(3600 / 64) and draws >= 2
  assert browser.console_errors(chromium) == []


def test_the_drawing_puts_each_frame_where_its_time_and_value_are(chromium, page):
  """Pixels of the drawn page: speaker A's VA bar is filled exactly where A speaks, and the
  p_now(A) curve passes through its value at any instant."""
  path, result = page
  open_page(chromium, path)
  chromium.execute_script('viewer.plot.setView(1, 8); viewer.plot.draw()')
  va, p_now, p_future = result['va'][:, 0], result['p_now'][:, 0], result['p_future'][:, 0]
  # Instants well inside a run of A's VA (either way) where p_future(A), drawn over p_now(A), is
  # at least 10 pixels away from it.
  frames = [f for f in range(60, 440, 7) if va[f - 3:f + 4].min() == va[f - 3:f + 4].max()
            and abs(p_now[f] - p_future[f]) * 90 > 10]
  assert len(frames) >= 10
  samples = chromium.execute_script('''
      const plot = viewer.plot, ctx = plot.base.getContext('2d'), out = [];
      const lane = label => {
        let top = 0;
        for (const l of plot.lanes) { if (l.label === label) return [top, l]; top += l.height; }
      };
      const [vaTop, vaLane] = lane('voice activity'), [curveTop, curveLane] = lane('next speaker');
      for (const f of arguments[0]) {
        const x = Math.round(plot.xAt((f + 0.5) / 50));
        const bar = ctx.getImageData(x, Math.round(vaTop + vaLane.height / 4), 1, 1).data;
        const column = ctx.getImageData(x, curveTop, 1, curveLane.height).data;
        out.push([Array.from(bar.slice(0, 4)), Array.from(column)]);
      }
      return [out, curveTop, curveLane.height];''', frames)
  blue = (0x1f, 0x77, 0xb4)  # speaker A, p_now(A)
  rows, _, height = samples
  for f, (bar, column) in zip(frames, rows):
    assert (tuple(bar[:3]) == blue and bar[3] == 255) == bool(va[f]), f
    pixels = np.array(column).reshape(height, 4)
    near_blue = np.flatnonzero((np.abs(pixels[:, :3] - blue).sum(1) < 60) & (pixels[:, 3] > 128))
    expected_y = 3 + (1 - round(p_now[f] * 255) / 255) * (height - 6)
    assert near_blue.size and np.abs(near_blue - expected_y).min() <= 2, (f, expected_y)


def test_a_page_whose_referenced_audio_is_gone_says_so_and_still_draws(chromium, page, tmp_path):
  _, result = page
  wav = tmp_path / 'gone.wav'
  sf.write(wav, np.zeros((16000, 2), np.int16), 16000)
  path = viewer.write_html(result, tmp_path / 'gone.html', audio=wav, embed_max_bytes=0)
  wav.unlink()
  chromium.get(path.as_uri())
  wait_for(chromium, 'return window.viewer && window.viewer.ready')
  notice = wait_for(chromium, 'const n = document.getElementById("notice");'
                              'return !n.hidden && n.textContent')
  assert 'gone.wav cannot be played' in notice and 'keep the two together' in notice
  assert chromium.execute_script('return viewer.plot.draws') >= 1
