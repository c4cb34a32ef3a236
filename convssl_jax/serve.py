"""Live turn-taking in the browser (`run.py --mode=serve`): a local web server (aiohttp) that serves
a page (web/live.html, web/live.js, the shared web/plot.js) and runs one `inference.Streamer` per
connected client, all forks of one compiled step.

The protocol, one session per WebSocket connection to /ws:
  client -> server  text {"type": "start", "rate": R, "channels": 1 or 2, "partner": NAME or null}:
                    the page's microphone at R Hz is speaker A (with 2 channels the second is B);
                    with one channel, B is the partner recording NAME (one of --audio's), played
                    into channel B as the microphone's samples arrive, or silence;
                    or {"type": "start", "file": NAME}: the stereo recording NAME streamed in real
                    time as if live (no audio from the client);
                    then binary messages: a float64 little-endian stamp (the client's send time,
                    echoed back) and int16 little-endian samples, interleaved, at most 1 s;
                    text {"type": "stop"} ends the session.
  server -> client  {"type": "ready", ...}; per push, the frames it completed: {"type": "frames",
                    "first": index, "p_now": [[A, B], ...], "p_future", "p_bc", "vad", "level"
                    (peak per frame), "stamp" (of the newest block in the push), "step_ms" (the
                    model's push), "wait_ms" (queued), "queue_s", "dropped_s"}; {"type":
                    "notice", "text"}; at the end {"type": "done", "written": [paths]}.
A malformed message closes its connection with 1007 (bad data) or 1008 (not allowed now) and the
reason; the other clients go on. Audio waits in a queue of at most `queue_s` seconds per session:
past it the oldest samples are dropped and counted (`dropped_s`), so a server that falls behind
stays at most that far behind instead of growing a backlog.

The server binds 127.0.0.1 by default; on loopback it answers only requests whose Host is a
loopback name (a DNS-rebinding page cannot reach it), and the WebSocket refuses a browser's Origin
other than the page's own. Clients without an Origin (not browsers) are served.
"""

import asyncio
import collections
import concurrent.futures
import dataclasses
import html
import ipaddress
import json
import pathlib
import string
import struct
import sys
import time
from typing import IO, Any

import numpy as np
import soundfile as sf
import soxr

from convssl_jax import errors, inference, predict, viewer
from convssl_jax.data import audio as audio_lib
from convssl_jax.data.audio import SAMPLE_RATE
from convssl_jax.models import factory

try:
  from aiohttp import WSCloseCode, WSMsgType, web
except ImportError:  # the optional extra: the other modes run without it
  web = None

INSTALL = "python -m pip install 'convssl-jax[serve]' (or: python -m pip install aiohttp)"
CURVES = ('p_now', 'p_future', 'p_bc', 'vad')
STAMP = struct.Struct('<d')
MAX_BLOCK_S = 1.0  # audio in one message at most
RATES = (8000, 192000)  # microphone rates accepted
LOOPBACK_NAMES = ('127.0.0.1', 'localhost', '[::1]')


class Malformed(Exception):
  """A client message the protocol does not allow: its connection is closed with `code`."""

  def __init__(self, reason: str, code: int = 1007):
    super().__init__(reason)
    self.code = code


# --- audio sources and the queue ------------------------------------------------------------

@dataclasses.dataclass
class Block:
  samples: np.ndarray  # [2, n] float32 at 16 kHz
  stamp: float | None  # the client's send time, echoed
  arrived: float  # time.perf_counter() when it came


class AudioQueue:
  """A session's audio waiting for the model, at most `max_samples`: past it the oldest samples
  are dropped and counted (`dropped`), so waiting audio never grows. For one event loop."""

  def __init__(self, max_samples: int):
    self.max_samples = max_samples
    self.samples = 0  # waiting now
    self.dropped = 0  # dropped so far
    self.closed = False
    self._blocks: collections.deque[Block] = collections.deque()
    self._ready = asyncio.Event()

  def put(self, block: Block) -> None:
    self._blocks.append(block)
    self.samples += block.samples.shape[1]
    while self.samples > self.max_samples:
      oldest, excess = self._blocks[0], self.samples - self.max_samples
      n = oldest.samples.shape[1]
      if n <= excess:
        self._blocks.popleft()
      else:
        oldest.samples, n = oldest.samples[:, excess:], excess
      self.samples -= n
      self.dropped += n
    self._ready.set()

  def close(self) -> None:
    """No more audio: `take` returns what waits, then None."""
    self.closed = True
    self._ready.set()

  async def take(self) -> list[Block] | None:
    """Every block waiting (once there is one); None once closed and empty."""
    while not self._blocks:
      if self.closed:
        return None
      self._ready.clear()
      await self._ready.wait()
    blocks = list(self._blocks)
    self._blocks.clear()
    self.samples = 0
    return blocks


def frame_peaks(pending: np.ndarray, samples: np.ndarray, hop: int
                ) -> tuple[np.ndarray, np.ndarray]:
  """(peak |sample| [k, 2] of each whole `hop` of pending + samples, what is left over)."""
  pending = np.concatenate([pending, samples], axis=1)
  k = pending.shape[1] // hop
  peaks = np.abs(pending[:, :k * hop]).reshape(2, k, hop).max(axis=-1).T
  return np.minimum(peaks, 1.0), pending[:, k * hop:]


# --- a session ------------------------------------------------------------------------------

class Session:
  """One client's stream: its Streamer fork, audio queue and, with `output`, its recording (what
  the model heard, float WAV) and every frame, written in predict's formats at the end."""

  def __init__(self, server: 'Server', number: int, start: dict[str, Any]):
    self.server, self.number = server, number
    self.streamer = server.streamer.fork()
    self.hop = server.frame_samples
    self.queue = AudioQueue(round(server.queue_s * SAMPLE_RATE))
    self.frames = 0
    self.partner = self.file = None
    self.rate, self.channels = SAMPLE_RATE, 2
    self._resampler = None
    self._peaks_pending = np.zeros((2, 0), np.float32)
    self._kept: list[dict[str, np.ndarray]] = []
    self.noticed: set[str] = set()  # notices sent to the client
    self.stem = f'live-{time.strftime("%Y%m%d-%H%M%S")}-{number}'
    if 'file' in start:
      self.file = server.open_recording(start['file'], 'file')
      if self.file.channels != 2:
        self.file.close()
        raise Malformed(f'file {start["file"]!r} is not stereo: give it as the partner')
    else:
      self.rate, self.channels = start['rate'], start['channels']
      if start.get('partner') is not None:
        if self.channels != 1:
          raise Malformed('a partner recording goes with one microphone channel')
        self.partner = server.open_recording(start['partner'], 'partner')
      if self.rate != SAMPLE_RATE:
        self._resampler = soxr.ResampleStream(self.rate, SAMPLE_RATE, self.channels,
                                              dtype='float32', quality='HQ')
    self.recording = None
    if server.output is not None:
      server.output.mkdir(parents=True, exist_ok=True)
      self.recording = sf.SoundFile(str(server.output / f'{self.stem}.wav'), 'w', SAMPLE_RATE, 2,
                                    'FLOAT')

  def describe(self) -> str:
    if self.file is not None:
      return f'file {self.file.path.name}'
    b = f'partner {self.partner.path.name}' if self.partner else (
        'microphone channel 2' if self.channels == 2 else 'silence')
    return f'microphone at {self.rate} Hz as A, {b} as B'

  def audio(self, data: bytes, arrived: float) -> Block:
    """A client's binary message -> the block it holds at 16 kHz, stereo (B from the partner)."""
    if self.file is not None:
      raise Malformed('audio sent while a file is streamed', 1008)
    frame_bytes = 2 * self.channels
    n, odd = divmod(len(data) - STAMP.size, frame_bytes)
    if odd or n < 1:
      raise Malformed(f'a {len(data)}-byte audio message: expected an 8-byte stamp and whole '
                      f'{frame_bytes}-byte sample frames')
    if n > MAX_BLOCK_S * self.rate:
      raise Malformed(f'{n} samples in one message, over {MAX_BLOCK_S:g} s', 1009)
    (stamp,) = STAMP.unpack_from(data)
    if not np.isfinite(stamp):
      raise Malformed('a non-finite stamp')
    pcm = np.frombuffer(data, '<i2', offset=STAMP.size).reshape(n, self.channels)
    samples = audio_lib.from_int16(pcm)
    if self._resampler is not None:
      samples = self._resampler.resample_chunk(samples)
    samples = np.ascontiguousarray(samples.T)
    if self.channels == 1:
      n = samples.shape[1]
      other = np.zeros((1, n), np.float32)
      if self.partner is not None:  # its first channel, silence after its end
        taken = self.partner.take(n)[0]
        other[0, :len(taken)] = taken
      samples = np.concatenate([samples, other])
    return Block(samples, stamp, arrived)

  def step(self, samples: np.ndarray) -> dict[str, Any]:
    """The model over samples [2, n] (in a worker thread): the frames completed, as lists."""
    start = time.perf_counter()
    out = self.streamer.push(samples)
    step_ms = 1000 * (time.perf_counter() - start)
    level, self._peaks_pending = frame_peaks(self._peaks_pending, samples, self.hop)
    out = {**{k: out[k] for k in CURVES if k in out}, 'level': level}
    if self.recording is not None:
      self.recording.write(samples.T)
      self._kept.append(out)
    first, self.frames = self.frames, self.frames + len(level)
    return {'first': first, **{k: v.tolist() for k, v in out.items()},
            'step_ms': round(step_ms, 3)}

  def finish(self) -> list[str]:
    """Closes the recording and (with frames) writes predict's files of the session."""
    for source in (self.partner, self.file):
      if source is not None:
        source.close()
    if self.recording is None:
      return []
    self.recording.close()
    wav = pathlib.Path(self.recording.name)
    if not self.frames:
      wav.unlink()
      return []
    result = {k: np.concatenate([o[k] for o in self._kept]) for k in self._kept[0]}
    result.update(frame_hz=self.server.frame_hz, va=np.zeros((self.frames, 2), np.float32),
                  events={}, envelope=result.pop('level'))
    legend = {'file': f'{wav.name} (live: {self.describe()})', **self.server.legend}
    written = predict.write(result, self.server.output, self.stem, audio=wav, legend=legend)
    return [str(p) for p in (wav, *predict.written_paths(written))]


def _start_message(data: str) -> dict[str, Any]:
  """A client's start message, checked."""
  message = _json(data)
  if message.get('type') != 'start':
    raise Malformed(f'expected a start message first, got type {message.get("type")!r}', 1008)
  if 'file' in message:
    if not isinstance(message['file'], str):
      raise Malformed('start: file must be a recording name')
    return message
  rate, channels = message.get('rate'), message.get('channels')
  if not isinstance(rate, int) or not RATES[0] <= rate <= RATES[1]:
    raise Malformed(f'start: rate {rate!r} is not an integer in {RATES[0]}..{RATES[1]} Hz')
  if channels not in (1, 2):
    raise Malformed(f'start: channels {channels!r} is not 1 or 2')
  if not isinstance(message.get('partner'), (str, type(None))):
    raise Malformed('start: partner must be a recording name or null')
  return message


def _json(data: str) -> dict[str, Any]:
  try:
    message = json.loads(data)
  except ValueError:
    raise Malformed('a text message that is not JSON') from None
  if not isinstance(message, dict):
    raise Malformed('a JSON message that is not an object')
  return message


# --- the server -----------------------------------------------------------------------------

def recordings(audio) -> dict[str, pathlib.Path]:
  """The recordings offered on the page ({name: path}): `audio`, a file or a folder's audio files;
  each checked to be one a browser session can use (1 or 2 channels, decodable)."""
  if not audio:
    return {}
  found = {}
  for path in predict.audio_files(audio):
    try:
      info = sf.info(str(path))
    except (RuntimeError, OSError) as err:
      raise audio_lib.AudioError(f'{path}: cannot decode audio ({err})') from err
    if info.channels > 2:
      raise audio_lib.AudioError(f'{path}: {info.channels} channels; expected 1 (a partner) or '
                                 '2 (a dialog, one speaker per channel)')
    found[path.name] = path
  return found


def _loopback(host: str) -> bool:
  try:
    return ipaddress.ip_address(host.strip('[]')).is_loopback
  except ValueError:
    return host == 'localhost'


def _wildcard(host: str) -> bool:
  return host in ('', '0.0.0.0', '::')


class Server:
  """The web server of a Streamer (`streamer`, whose forks serve the clients); `recordings`
  ({name: path}) are offered as partners and as files to stream; with `output`, each session's
  audio and frames are written there. `run()` serves until interrupted; `start()`/`stop()` in a
  running event loop (tests, benchmarks)."""

  def __init__(self, streamer: inference.Streamer, frame_hz: int, *, recordings=None,
               legend=None, output=None, host: str = '127.0.0.1', port: int = 8000,
               queue_s: float = 0.5, max_clients: int = 8, workers: int = 2,
               log: IO[str] = sys.stderr):
    require()
    self.streamer, self.frame_hz = streamer, frame_hz
    self.frame_samples = SAMPLE_RATE // frame_hz
    self.recordings = dict(recordings or {})
    self.legend = dict(legend or {})
    self.output = None if output is None else pathlib.Path(output)
    self.host, self.port = host, port
    self.queue_s, self.max_clients = queue_s, max_clients
    self.log = log
    self.sessions: dict[int, Session] = {}
    self._numbers = iter(range(1, sys.maxsize))
    self._pool = concurrent.futures.ThreadPoolExecutor(workers, 'convssl-serve')
    self._runner = None

  # -- requests --

  def _allowed_host(self, host: str) -> bool:
    """Whether a request's Host header names this server (on loopback: a loopback name)."""
    if _wildcard(self.host):
      return True
    names = {*LOOPBACK_NAMES} if _loopback(self.host) else {self.host}
    ports = {f':{self.port}', ''} if self.port == 80 else {f':{self.port}'}
    return host in {n + p for n in names for p in ports}

  def application(self):
    """The aiohttp application: the page, the capture worklet, the recordings, the WebSocket."""

    @web.middleware
    async def check_host(request, handler):
      if not self._allowed_host(request.host):
        self._say(f'refused a request for host {request.host!r} from {request.remote}')
        return web.Response(status=403, text=f'host {request.host!r} is not this server\n')
      return await handler(request)

    app = web.Application(middlewares=[check_host])
    app.router.add_get('/', self._page)
    app.router.add_get('/capture.js', self._capture)
    app.router.add_get('/favicon.ico', self._no_content)
    app.router.add_get('/recording/{name}', self._recording)
    app.router.add_get('/ws', self._websocket)
    return app

  async def _page(self, request):
    meta = {'frame_hz': self.frame_hz, 'sample_rate': SAMPLE_RATE, 'queue_s': self.queue_s,
            'context_s': self.streamer.context / self.frame_hz,
            'recordings': [{'name': n, **_describe(p)} for n, p in self.recordings.items()]}
    legend = {**self.legend, 'attention': f'{meta["context_s"]:g} s',
              'queue': f'{self.queue_s:g} s at most per client (the oldest audio dropped past it)'}
    body = string.Template((viewer.WEB / 'live.html').read_text()).substitute(
        legend='\n'.join(f'<dt>{html.escape(k)}</dt><dd>{html.escape(str(v))}</dd>'
                         for k, v in legend.items()),
        meta=json.dumps(meta).replace('</', '<\\/'),
        plot_js=(viewer.WEB / 'plot.js').read_text(), live_js=(viewer.WEB / 'live.js').read_text())
    return web.Response(text=viewer.page('convssl-jax live', body), content_type='text/html')

  async def _no_content(self, request):  # the browser's favicon request: none, and no 404
    return web.Response(status=204)

  async def _capture(self, request):
    return web.Response(text=(viewer.WEB / 'capture.js').read_text(),
                        content_type='text/javascript')

  async def _recording(self, request):
    path = self.recordings.get(request.match_info['name'])
    if path is None:
      raise web.HTTPNotFound(text='no such recording\n')
    return web.FileResponse(path)

  def open_recording(self, name, role: str) -> audio_lib.BlockReader:
    path = self.recordings.get(name)
    if path is None:
      raise Malformed(f'{role} {str(name)[:40]!r} is not one of the recordings offered', 1008)
    return audio_lib.BlockReader(path)

  async def _websocket(self, request):
    origin = request.headers.get('Origin')
    if origin is not None and origin not in (f'http://{request.host}',
                                             f'https://{request.host}'):
      self._say(f'refused a WebSocket from origin {origin!r} ({request.remote})')
      return web.Response(status=403, text=f'origin {origin!r} is not this server\n')
    ws = web.WebSocketResponse(max_msg_size=int(STAMP.size + 4 * MAX_BLOCK_S * RATES[1]) + 64)
    await ws.prepare(request)
    if len(self.sessions) >= self.max_clients:
      await ws.close(code=WSCloseCode.TRY_AGAIN_LATER,
                     message=f'the server is busy: {self.max_clients} clients'.encode())
      return ws
    number, session, worker, feeder = next(self._numbers), None, None, None
    try:
      message = await asyncio.wait_for(ws.receive(), 30)
      if message.type != WSMsgType.TEXT:
        raise Malformed('expected a start message first', 1008)
      session = Session(self, number, _start_message(message.data))
      self.sessions[number] = session
      worker = asyncio.create_task(self._work(ws, session))
      self._say(f'client {number} ({request.remote}): {session.describe()}')
      await ws.send_json({'type': 'ready', 'session': number, 'frame_hz': self.frame_hz,
                          'describe': session.describe()})
      if session.file is not None:
        feeder = asyncio.create_task(self._feed(session))
      async for message in ws:
        if message.type == WSMsgType.BINARY:
          session.queue.put(session.audio(message.data, time.perf_counter()))
          if session.partner is not None and session.partner.ended:
            await self._notice_once(ws, session, 'the partner recording has ended')
        elif message.type == WSMsgType.TEXT:
          kind = _json(message.data).get('type')
          if kind != 'stop':
            raise Malformed(f'unexpected message type {str(kind)[:40]!r}', 1008)
          break
        else:
          break
    except Malformed as err:
      self._say(f'client {number}: closed, {err}')
      await ws.close(code=err.code, message=str(err)[:120].encode())
    except TimeoutError:
      await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b'no start message in 30 s')
    except audio_lib.AudioError as err:
      self._say(f'client {number}: closed, {err}')
      await ws.close(code=WSCloseCode.INTERNAL_ERROR, message=str(err)[-120:].encode())
    finally:
      if feeder is not None:
        feeder.cancel()
      if session is not None:
        session.queue.close()
        try:
          await worker
        finally:
          del self.sessions[number]
    return ws

  async def _notice_once(self, ws, session: Session, text: str) -> None:
    if text not in session.noticed:
      session.noticed.add(text)
      await ws.send_json({'type': 'notice', 'text': text})

  async def _feed(self, session: Session) -> None:
    """A file released in real time, a frame's hop at a time, then the end of the session."""
    loop, hop = asyncio.get_running_loop(), session.hop
    start, sent = loop.time(), 0
    try:
      while not session.file.ended:
        samples = session.file.take(hop)
        if samples.shape[1]:
          session.queue.put(Block(samples, None, time.perf_counter()))
        sent += hop
        await asyncio.sleep(max(0.0, start + sent / SAMPLE_RATE - loop.time()))
    except audio_lib.AudioError as err:  # the file goes bad part-way: what came before stands
      self._say(f'client {session.number}: {err}')
    session.queue.close()

  async def _work(self, ws, session: Session) -> None:
    """Steps the session's queued audio, all that waits at once, sends each push's frames; once
    the queue is closed and empty, writes the session's files and tells the client (`done`)."""
    loop = asyncio.get_running_loop()
    try:
      while (blocks := await session.queue.take()) is not None:
        samples = np.concatenate([b.samples for b in blocks], axis=1)
        wait_ms = 1000 * (time.perf_counter() - blocks[0].arrived)
        out = await loop.run_in_executor(self._pool, session.step, samples)
        if out['level'] and not ws.closed:
          await ws.send_json({'type': 'frames', **out, 'stamp': blocks[-1].stamp,
                              'wait_ms': round(wait_ms, 3),
                              'queue_s': session.queue.samples / SAMPLE_RATE,
                              'dropped_s': session.queue.dropped / SAMPLE_RATE})
        if session.file is not None and session.file.ended:
          await self._notice_once(ws, session, 'the file has ended')
      written = await loop.run_in_executor(self._pool, session.finish)
    except Exception as err:  # a bug: this client is closed, saying so; the others go on
      self._say(f'client {session.number}: failed: {err!r}')
      await ws.close(code=WSCloseCode.INTERNAL_ERROR, message=b'server error (see its log)')
      raise
    self._say(f'client {session.number}: {session.frames} frames, dropped '
              f'{session.queue.dropped / SAMPLE_RATE:g} s'
              + (f'; written {", ".join(written)}' if written else ''))
    if not ws.closed:
      await ws.send_json({'type': 'done', 'frames': session.frames, 'written': written})
      await ws.close()

  # -- running --

  def _say(self, text: str) -> None:
    print(f'serve: {text}', file=self.log, flush=True)

  async def start(self) -> str:
    """Binds and serves in the running event loop; returns the page's URL."""
    self._runner = web.AppRunner(self.application(), access_log=None, handle_signals=False)
    await self._runner.setup()
    site = web.TCPSite(self._runner, self.host, self.port)
    await site.start()
    self.port = self._runner.addresses[0][1]  # the port chosen for port 0
    shown = '127.0.0.1' if _wildcard(self.host) else self.host
    return f'http://{shown}:{self.port}/'

  async def stop(self) -> None:
    if self._runner is not None:
      await self._runner.cleanup()
    self._pool.shutdown(wait=False, cancel_futures=True)

  def run(self) -> None:
    """Serves until interrupted (Ctrl-C)."""
    async def forever():
      url = await self.start()
      self._say(f'open {url} (Ctrl-C stops)')
      try:
        await asyncio.Event().wait()
      finally:
        await self.stop()

    try:
      asyncio.run(forever())
    except KeyboardInterrupt:
      pass


def require() -> None:
  """Refuses, with the command that installs it, a missing aiohttp (an optional extra)."""
  if web is None:
    raise errors.UserError(f'--mode=serve needs aiohttp: {INSTALL}')


def _describe(path: pathlib.Path) -> dict[str, Any]:
  info = sf.info(str(path))
  return {'seconds': round(info.frames / info.samplerate, 2), 'channels': info.channels}


def warm_up(streamer: inference.Streamer) -> None:
  """Compiles the step before any client comes; every fork shares it. Two hops: the state a step
  returns may differ from the initial one in placement (a restored model's params are on a mesh),
  which compiles the step a second time."""
  streamer.fork().push(np.zeros((2, 2 * streamer.hop), np.float32))


def server_for(model, config, *, audio=None, output=None, context_s: float | None = None,
               source: str = '', **options) -> Server:
  """The Server of a ModelState (`trainer.load`), compiled and ready: `audio` (a file or folder)
  the recordings offered, `options` Server's (host, port, queue_s, max_clients, ...)."""
  require()
  if 'va' in factory.model_class(config.model).inputs:
    raise errors.UserError('--mode=serve: the mono model reads the current voice activity, which '
                           'a live microphone does not give; serve a stereo model')
  offered = recordings(audio)
  try:
    streamer = inference.streamer_for(model.model(), model.objective, config, context_s)
  except ValueError as err:  # a model that cannot stream, with the reason
    raise errors.UserError(f'--mode=serve: {err}') from err
  warm_up(streamer)
  return Server(streamer, config.model.frame_hz, recordings=offered, output=output,
                legend=predict.legend_of(config, source), **options)


def serve(model, config, *, host: str = '127.0.0.1', port: int = 8000, log: IO[str] = sys.stderr,
          **options) -> None:
  """`run.py --mode=serve`: serves the model until interrupted (see `server_for`)."""
  if not _loopback(host):
    print(f'serve: warning: listening on {host!r}, not loopback: anyone who can reach this '
          'machine can stream to the model and fetch the offered recordings. Browsers give the '
          'microphone only to https or localhost pages: from another machine, prefer an SSH '
          'tunnel (ssh -L PORT:127.0.0.1:PORT HOST) to the default 127.0.0.1.', file=log)
  server_for(model, config, host=host, port=port, log=log, **options).run()
