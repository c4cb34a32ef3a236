"""A real browser for the page tests and benchmarks: Debian's headless Chromium driven by selenium
through Debian's chromedriver (`apt-get install chromium chromium-driver`; no downloaded browser
builds: selenium is given both paths, so its driver manager never runs).

`unavailable()` says why no browser can run here (None when it can); `start()` launches one with a
fresh profile, no background network, audio allowed to play without a gesture, and the console
and network logs kept for `console_errors` and `requests`.
"""

import json
import shutil
import time

CHROMIUM = ('chromium', 'chromium-browser')
FLAGS = ('--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync',
         '--autoplay-policy=no-user-gesture-required', '--mute-audio')
INSTALL = 'apt-get install -y chromium chromium-driver'


def _binary() -> str | None:
  return next(filter(None, map(shutil.which, CHROMIUM)), None)


def unavailable() -> str | None:
  """Why the browser tests cannot run here, with the fix; None when they can."""
  try:
    import selenium  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    return 'selenium is not installed: python -m pip install -r requirements.txt'
  if not _binary():
    return f'no chromium on PATH: {INSTALL}'
  if not shutil.which('chromedriver'):
    return f'no chromedriver on PATH: {INSTALL}'
  return None


def start(profile_dir, width: int = 1400, height: int = 900, extra_flags: tuple[str, ...] = ()):
  """A headless Chromium (selenium webdriver) with its profile in `profile_dir`; the caller quits
  it."""
  from selenium import webdriver  # pylint: disable=import-outside-toplevel
  from selenium.webdriver.chrome.service import Service  # pylint: disable=import-outside-toplevel

  options = webdriver.ChromeOptions()
  options.binary_location = _binary()
  for flag in (*FLAGS, f'--user-data-dir={profile_dir}', f'--window-size={width},{height}',
               *extra_flags):
    options.add_argument(flag)
  options.set_capability('goog:loggingPrefs', {'browser': 'ALL', 'performance': 'ALL'})
  return webdriver.Chrome(options=options, service=Service(shutil.which('chromedriver')))


def wait_for(driver, script: str, timeout: float = 30.0):
  """The value of `script` once it is truthy (polled), else a failure after `timeout` seconds."""
  end = time.monotonic() + timeout
  while not (value := driver.execute_script(script)):
    if time.monotonic() > end:
      import pytest  # pylint: disable=import-outside-toplevel
      pytest.fail(f'still false after {timeout} s: {script}')
    time.sleep(0.05)
  return value


def console_errors(driver) -> list[str]:
  """The console's errors (and uncaught exceptions) since the last call."""
  return [e['message'] for e in driver.get_log('browser') if e['level'] == 'SEVERE']


def requests(driver) -> list[str]:
  """The URLs the page asked for since the last call (the network log)."""
  urls = []
  for entry in driver.get_log('performance'):
    message = json.loads(entry['message'])['message']
    if message['method'] == 'Network.requestWillBeSent':
      urls.append(message['params']['request']['url'])
  return urls
