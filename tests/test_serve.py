"""`run.py --mode=serve`'s server at the protocol level (plain WebSocket clients, aiohttp's): a
recording streamed as if live and a microphone with a partner give offline predict's frames of
the audio the model heard; a malformed client is closed with the reason while another streams on;
foreign Origins and Hosts are refused; each client's queue stays bounded, dropping the oldest
audio. The server runs in a thread of the test process on the `tiny` model of `tiny_run`."""

import asyncio
import io
import json
import struct
import threading
import time

import numpy as np
import pytest
import soundfile as sf

from convssl_jax import errors, predict, serve, trainer
from convssl_jax.data import audio as audio_lib
from tests import processes

aiohttp = pytest.importorskip('aiohttp', reason='the serve extra: pip install aiohttp')

RATE = 16000
CURVES = ('p_now', 'p_future', 'p_bc', 'vad')


def speech_like(seconds: float, channels: int, seed: int) -> np.ndarray:
  """[S, channels] noise with loud and quiet tenths of a second, as int16-exact float32."""
  rng = np.random.default_rng(seed)
  n = int(seconds * RATE)
  gain = np.repeat(rng.uniform(0, 0.4, (n // 1600 + 1, channels)), 1600, axis=0)[:n]
  return audio_lib.from_int16(audio_lib.to_int16(gain * rng.standard_normal((n, channels))))


@pytest.fixture(scope='module')
def server(tiny_run, tmp_path_factory):
  """(server, its URL, the ModelState, config, recordings folder) with a 2.5-s stereo dialog and
  a 4-s mono partner on offer, sessions written to an output folder."""
  config, workdir = tiny_run
  model, config, _ = trainer.load(config, workdir=workdir)
  root = tmp_path_factory.mktemp('serve')
  recordings = root / 'recordings'
  recordings.mkdir()
  sf.write(recordings / 'dialog.wav', speech_like(2.5, 2, 1), RATE, subtype='PCM_16')
  sf.write(recordings / 'partner.wav', speech_like(4.0, 1, 2), RATE, subtype='PCM_16')
  log = io.StringIO()
  srv = serve.server_for(model, config, audio=recordings, output=root / 'out', port=0, log=log)
  loop = asyncio.new_event_loop()
  thread = threading.Thread(target=loop.run_forever, daemon=True)
  thread.start()
  url = asyncio.run_coroutine_threadsafe(srv.start(), loop).result(60)
  yield srv, url, model, config, recordings
  asyncio.run_coroutine_threadsafe(srv.stop(), loop).result(60)
  loop.call_soon_threadsafe(loop.stop)
  thread.join(10)


async def session(url, start, blocks=(), pace_s=0.0, origin=None):
  """One client: sends `start`, then each of `blocks` (bytes, after a stamp) every `pace_s`, then
  stop; returns (messages received, the close code, the stamps sent)."""
  headers = {'Origin': origin} if origin else {}
  async with aiohttp.ClientSession() as client:
    async with client.ws_connect(f'{url}ws', headers=headers) as ws:
      await ws.send_json(start)
      messages, stamps = [], []

      async def receive():
        async for message in ws:
          messages.append(json.loads(message.data))

      receiver = asyncio.create_task(receive())
      for block in blocks:
        if ws.closed:
          break
        stamps.append(time.perf_counter() * 1000)
        await ws.send_bytes(struct.pack('<d', stamps[-1]) + block)
        await asyncio.sleep(pace_s)
      if blocks and not ws.closed:
        await ws.send_json({'type': 'stop'})
      await asyncio.wait_for(receiver, 60)
      return messages, ws.close_code, stamps


def frames_of(messages) -> dict[str, np.ndarray]:
  """The frames messages' curves joined [T, 2], checking that they follow one another."""
  frames = [m for m in messages if m['type'] == 'frames']
  assert [m['first'] for m in frames] == list(np.cumsum([0] + [len(m['level']) for m in frames])[
      :-1])
  return {k: np.concatenate([np.array(m[k], np.float64).reshape(-1, 2) for m in frames])
          for k in (*CURVES, 'level')}


def assert_equal_to_predict(got, model, config, wav):
  """The frames equal offline predict of `wav` (the tiny model's one 5-s window covers it)."""
  want = predict.predict_file(model, config, wav)
  assert len(got['vad']) == len(want['vad']) > 0
  for key in CURVES:
    np.testing.assert_allclose(got[key], want[key], atol=1e-4, err_msg=key)


def pcm_blocks(wave: np.ndarray, size: int) -> list[bytes]:
  """[S, C] float32 -> int16 interleaved messages of `size` sample frames."""
  pcm = audio_lib.to_int16(wave).astype('<i2')
  return [pcm[i:i + size].tobytes() for i in range(0, len(pcm), size)]


def test_a_recording_streamed_as_if_live_gives_offline_predicts_frames_in_real_time(server):
  srv, url, model, config, recordings = server
  start = time.perf_counter()
  messages, code, _ = asyncio.run(session(url, {'type': 'start', 'file': 'dialog.wav'}))
  elapsed = time.perf_counter() - start
  assert code == 1000 and messages[0]['type'] == 'ready' and messages[-1]['type'] == 'done'
  assert elapsed >= 2.4  # released at the pace of the audio
  got = frames_of(messages)
  assert_equal_to_predict(got, model, config, recordings / 'dialog.wav')
  wave = sf.read(recordings / 'dialog.wav', dtype='float32')[0]
  peaks = np.abs(wave[:len(got['level']) * 320]).reshape(-1, 320, 2).max(axis=1)
  np.testing.assert_allclose(got['level'], peaks, atol=1e-7)
  written = messages[-1]['written']
  heard = sf.read(written[0], dtype='float32')[0]  # the session's audio: the file, as it came
  np.testing.assert_array_equal(heard, wave[:len(heard)])
  assert len(heard) >= len(wave) - 320
  assert [p.rsplit('.', 1)[1] for p in written] == ['wav', 'json', 'csv', 'TextGrid', 'png',
                                                   'html']
  saved = json.loads(open(written[1]).read())
  np.testing.assert_allclose(saved['p_future_A'], got['p_future'][:, 0], atol=1e-5)


def test_a_microphone_with_a_partner_gives_offline_predicts_frames_of_what_the_model_heard(
    server):
  """Speaker A from the client (20 ms int16 blocks in real time), B the partner recording played
  in step with A's samples: the frames equal predict on the session's audio, whose channel A is
  what was sent and channel B the partner's first samples; every stamp comes back."""
  srv, url, model, config, recordings = server
  mic = speech_like(3.0, 1, 7)
  start = {'type': 'start', 'rate': RATE, 'channels': 1, 'partner': 'partner.wav'}
  messages, code, stamps = asyncio.run(session(url, start, pcm_blocks(mic, 320), 0.02))
  assert code == 1000 and messages[-1]['type'] == 'done'
  got = frames_of(messages)
  wav = messages[-1]['written'][0]
  heard = sf.read(wav, dtype='float32')[0]
  assert len(heard) == len(mic)
  np.testing.assert_array_equal(heard[:, 0], mic[:, 0])
  partner = sf.read(recordings / 'partner.wav', dtype='float32')[0]
  np.testing.assert_array_equal(heard[:, 1], partner[:len(mic)])
  assert_equal_to_predict(got, model, config, wav)
  echoed = [m['stamp'] for m in messages if m['type'] == 'frames']
  assert set(echoed) <= set(stamps) and len(echoed) >= len(stamps) // 2
  assert all(m['dropped_s'] == 0 for m in messages if m['type'] == 'frames')


def test_a_second_input_as_channel_b_and_a_microphone_at_another_rate(server):
  """Two channels at 48 kHz: resampled to 16 kHz on the server as they come, in step."""
  srv, url, model, config, _ = server
  t = np.arange(int(1.5 * 48000)) / 48000
  two = np.stack([0.3 * np.sin(2 * np.pi * 440 * t), 0.2 * np.sin(2 * np.pi * 250 * t)], 1)
  start = {'type': 'start', 'rate': 48000, 'channels': 2, 'partner': None}
  messages, code, _ = asyncio.run(session(url, start, pcm_blocks(two, 960), 0.02))
  assert code == 1000
  heard = sf.read(messages[-1]['written'][0], dtype='float32')[0]
  assert 1.5 * RATE - 800 <= len(heard) <= 1.5 * RATE  # the resampler holds back < 50 ms
  want = audio_lib.resample(two.astype(np.float32), 48000, RATE)
  middle = slice(1000, len(heard) - 1000)  # away from the edges' filter transients
  np.testing.assert_allclose(heard[middle], want[middle], atol=2e-3)
  assert_equal_to_predict(frames_of(messages), model, config, messages[-1]['written'][0])


MALFORMED = [
    ({'type': 'start', 'rate': RATE, 'channels': 1}, [b'\x00' * 11], 1007, 'a 11-byte audio'),
    ({'type': 'start', 'rate': RATE, 'channels': 2}, [b'\x00' * 8 + b'\x00' * 6], 1007,
     '4-byte sample frames'),
    ({'type': 'start', 'rate': RATE, 'channels': 1},
     [struct.pack('<d', 0) + b'\x00' * 2 * 20000], 1009, 'over 1 s'),
    ({'type': 'start', 'rate': 5, 'channels': 1}, [], 1007, 'rate 5 is not'),
    ({'type': 'start', 'rate': RATE, 'channels': 3}, [], 1007, 'channels 3'),
    ({'type': 'hello'}, [], 1008, 'expected a start message'),
    ({'type': 'start', 'rate': RATE, 'channels': 1, 'partner': '../etc/passwd'}, [], 1008,
     'not one of the recordings'),
    ({'type': 'start', 'file': 'partner.wav'}, [], 1007, 'not stereo'),
    ({'type': 'start', 'file': 'dialog.wav'}, [b'\x00' * 16], 1008, 'while a file'),
]


@pytest.mark.parametrize('start, raw, code, reason', MALFORMED, ids=[m[3] for m in MALFORMED])
def test_a_malformed_client_is_closed_with_the_reason_while_another_streams_on(
    server, start, raw, code, reason):
  srv, url, model, config, recordings = server

  async def malformed():
    """(close code, close reason) of a client that sends `start`, then `raw`."""
    async with aiohttp.ClientSession() as client:
      async with client.ws_connect(f'{url}ws') as ws:
        await ws.send_json(start)
        for data in raw:
          await asyncio.sleep(0.3)
          await ws.send_bytes(data)
        while (message := await ws.receive()).type != aiohttp.WSMsgType.CLOSE:
          assert message.type == aiohttp.WSMsgType.TEXT  # ready, before the bad message
        return message.data, message.extra

  async def both():
    good = asyncio.create_task(session(url, {'type': 'start', 'file': 'dialog.wav'}))
    await asyncio.sleep(0.5)  # the good client is streaming when the bad one comes
    return await malformed(), await good

  (bad_code, bad_reason), (messages, good_code, _) = asyncio.run(both())
  assert bad_code == code and reason in bad_reason
  assert f'closed, {bad_reason}' in srv.log.getvalue()
  assert good_code == 1000 and messages[-1]['type'] == 'done'
  assert len(frames_of(messages)['vad']) == messages[-1]['frames'] >= 2.4 * 50


def test_a_foreign_origin_or_host_is_refused_and_the_pages_own_served(server):
  srv, url, *_ = server
  port = srv.port

  async def probe():
    async with aiohttp.ClientSession() as client:
      with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect(f'{url}ws', headers={'Origin': 'http://evil.example'})
      assert refused.value.status == 403
      async with client.ws_connect(f'{url}ws', headers={'Origin': url.rstrip('/')}) as ws:
        await ws.send_json({'type': 'start', 'file': 'dialog.wav'})
        assert (await ws.receive_json())['type'] == 'ready'
      async with client.get(url, headers={'Host': f'evil.example:{port}'}) as response:
        assert response.status == 403  # a DNS-rebinding page cannot reach a loopback server
      async with client.get(url, headers={'Host': f'localhost:{port}'}) as response:
        assert response.status == 200 and 'ConvsslPlot' in await response.text()

  asyncio.run(probe())
  assert "refused a WebSocket from origin 'http://evil.example'" in srv.log.getvalue()


def test_a_client_faster_than_the_model_has_its_oldest_audio_dropped_and_counted(server):
  """1 s sent at once into a 0.1-s queue: the newest 0.1 s (5 frames) is heard, 0.9 s dropped."""
  srv, url, *_ = server
  mic = speech_like(1.0, 1, 9)
  srv.queue_s = 0.1
  try:
    start = {'type': 'start', 'rate': RATE, 'channels': 1, 'partner': None}
    messages, code, _ = asyncio.run(session(url, start, pcm_blocks(mic, RATE)))
  finally:
    srv.queue_s = 0.5
  frames = [m for m in messages if m['type'] == 'frames']
  assert code == 1000 and messages[-1]['frames'] == 5
  assert frames[-1]['dropped_s'] == pytest.approx(0.9)
  heard = sf.read(messages[-1]['written'][0], dtype='float32')[0]
  np.testing.assert_array_equal(heard[:, 0], mic[-1600:, 0])  # the newest audio


def test_the_audio_queue_keeps_the_newest_samples_within_its_bound():
  async def run():
    queue = serve.AudioQueue(1000)
    for i, n in enumerate((300, 600, 250, 400)):
      queue.put(serve.Block(np.full((2, n), i, np.float32), None, 0.0))
      assert queue.samples == min(sum((300, 600, 250, 400)[:i + 1]), 1000)
    blocks = await queue.take()
    return queue, np.concatenate([b.samples for b in blocks], axis=1)

  queue, kept = asyncio.run(run())
  assert queue.dropped == 1550 - 1000 and queue.samples == 0
  want = np.concatenate([np.full(n, i) for i, n in enumerate((300, 600, 250, 400))])[-1000:]
  np.testing.assert_array_equal(kept[0], want)


def test_a_full_server_turns_a_client_away_saying_so(server):
  srv, url, *_ = server
  srv.max_clients = 0
  try:
    messages, code, _ = asyncio.run(session(url, {'type': 'start', 'file': 'dialog.wav'}))
  finally:
    srv.max_clients = 8
  assert code == 1013 and messages == []


def test_serve_refuses_what_cannot_stream_and_names_the_missing_extra(tiny_run, monkeypatch):
  """The mono model (it reads voice activity a microphone does not give); an encoder that looks
  ahead (CPC_audio's padding, as converted VoiceActivityProjection models have): one line each."""
  config, workdir = tiny_run
  mono = config.copy_and_resolve_references()
  mono.model.kind = 'mono'
  with pytest.raises(errors.UserError, match='mono model'):
    serve.server_for(None, mono)
  ahead = config.copy_and_resolve_references()
  ahead.model.encoder.padding = 'reference'
  model, ahead, _ = trainer.load(ahead, workdir=workdir)
  with pytest.raises(errors.UserError, match="--mode=serve: streaming needs the encoder's 'causal"):
    serve.server_for(model, ahead)
  monkeypatch.setattr(serve, 'web', None)
  with pytest.raises(errors.UserError, match=r'pip install .*aiohttp'):
    serve.require()


def test_a_recording_is_read_in_bounded_memory_whatever_its_length(tmp_path):
  """A child under an address-space limit 48 MB above what it holds after its imports reads 10
  minutes of 8 kHz stereo (at 16 kHz as float32, read whole, 77 MB) block by block."""
  rng = np.random.default_rng(0)
  path = tmp_path / 'long.wav'
  with sf.SoundFile(path, 'w', 8000, 2, 'PCM_16') as f:
    for _ in range(10):
      f.write((rng.standard_normal((60 * 8000, 2)) * 3000).astype(np.int16))
  done = processes.run_limited(f"""
      from convssl_jax.data import audio
      limit_memory(48)
      reader, n = audio.BlockReader({str(path)!r}), 0
      while not reader.ended:
        n += reader.take(16000).shape[1]
      print(n)
      """, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  assert abs(int(done.stdout) - 10 * 60 * 16000) <= 16  # all of it, resampled


@pytest.mark.parametrize('bind, host, answered', [
    ('127.0.0.1', '127.0.0.1:8000', True), ('127.0.0.1', 'localhost:8000', True),
    ('127.0.0.1', '[::1]:8000', True), ('127.0.0.1', 'evil.example:8000', False),
    ('127.0.0.1', '127.0.0.1:8001', False), ('192.0.2.5', '192.0.2.5:8000', True),
    ('192.0.2.5', 'localhost:8000', False), ('0.0.0.0', 'any.name:8000', True)])
def test_the_hosts_a_server_answers_follow_where_it_listens(bind, host, answered):
  """On loopback only loopback names (no DNS rebinding); on an address, that address; on every
  address (0.0.0.0), any name the network uses for it."""
  assert serve.Server(None, 50, host=bind, port=8000)._allowed_host(host) == answered
