"""Live turn-taking: audio sources paced like a microphone, a `Streamer`, and a terminal bar
(`stream`: what `run.py --mode=stream` does).

Sources yield stereo blocks [2, n] float32 at 16 kHz (channel 0 = speaker A): a file (read
whole, resampled if needed, then released `block_s` at a time in real time, or as fast as
possible), raw 16-bit little-endian interleaved stereo PCM at 16 kHz from a binary stream such as
stdin, or a microphone through the optional `sounddevice` package.
"""

import gc
import pathlib
import sys
import time
from collections.abc import Iterator
from typing import IO, Any

import ml_collections
import numpy as np

from convssl_jax import errors, inference, predict
from convssl_jax.data import audio as audio_lib
from convssl_jax.data import va as va_lib
from convssl_jax.data.audio import SAMPLE_RATE
from convssl_jax.models import factory, pretrained


def _block_samples(block_s: float) -> int:
  return max(int(block_s * SAMPLE_RATE), 1)


def _decode_pcm(data: bytes) -> np.ndarray:
  """Interleaved little-endian int16 stereo -> [2, n] float32."""
  return audio_lib.from_int16(np.frombuffer(data, '<i2').reshape(-1, 2)).T.copy()


def file_source(path, block_s: float = 0.02, pace: bool = True) -> Iterator[np.ndarray]:
  """A mono or stereo audio file (read now) in blocks [2, n]; with `pace`, each block when its
  time comes."""
  return wave_source(audio_lib.read_stereo(path, sample_rate=SAMPLE_RATE), block_s, pace)


def wave_source(wave: np.ndarray, block_s: float = 0.02, pace: bool = True
                ) -> Iterator[np.ndarray]:
  """Audio [S, 2] at 16 kHz in blocks [2, n]; with `pace`, each block when its time comes."""
  block = _block_samples(block_s)
  start = time.perf_counter()
  for first in range(0, len(wave), block):
    if pace:
      time.sleep(max(0.0, start + (first + block) / SAMPLE_RATE - time.perf_counter()))
    yield np.ascontiguousarray(wave[first:first + block].T)


def pcm_source(stream: IO[bytes], block_s: float = 0.02) -> Iterator[np.ndarray]:
  """Raw int16 stereo PCM (16 kHz, little-endian, interleaved A, B) from a binary stream, in
  blocks [2, n] as they arrive; an odd trailing byte or a half frame at the end is dropped."""
  frame_bytes = 4  # two int16 samples
  want = _block_samples(block_s) * frame_bytes
  pending = b''
  while True:
    chunk = stream.read(want - len(pending))
    if not chunk:
      break
    pending += chunk
    whole = len(pending) // frame_bytes * frame_bytes
    if whole >= want:
      yield _decode_pcm(pending[:whole])
      pending = pending[whole:]
  whole = len(pending) // frame_bytes * frame_bytes
  if whole:
    yield _decode_pcm(pending[:whole])


def mic_source(block_s: float = 0.02, device=None) -> Iterator[np.ndarray]:
  """A 2-channel input device (one speaker per channel) through `sounddevice`, if installed."""
  try:
    import sounddevice  # pylint: disable=import-outside-toplevel
  except (ImportError, OSError) as err:
    raise RuntimeError('--audio=mic needs the optional sounddevice package and PortAudio '
                       f'(pip install sounddevice): {err}') from err
  block = _block_samples(block_s)
  with sounddevice.InputStream(samplerate=SAMPLE_RATE, channels=2, dtype='float32',
                               blocksize=block, device=device) as stream:
    while True:
      data, _ = stream.read(block)
      yield np.ascontiguousarray(data.T)


def bar(frame: dict[str, np.ndarray], time_s: float, width: int = 30) -> str:
  """One frame's outputs as a line: who is likely to speak next (p_future, else p_now or p) as a
  bar from A (left) to B (right), and the voice activity the model hears."""
  key = next(k for k in ('p_future', 'p_now', 'p') if k in frame)
  p_a = float(frame[key][0])
  filled = round(p_a * width)
  line = f'{time_s:8.2f}s  A {"#" * filled}{"." * (width - filled)} B  {key} A {p_a:.2f}'
  if 'vad' in frame:
    line += f'  vad A {frame["vad"][0]:.2f} B {frame["vad"][1]:.2f}'
  if 'p_bc' in frame:
    line += f'  bc A {frame["p_bc"][0]:.2f} B {frame["p_bc"][1]:.2f}'
  return line


def run(streamer, blocks: Iterator[np.ndarray], frame_hz: int, *, out: IO[str] = sys.stdout,
        every_s: float = 0.1, va: va_lib.VAFrameStream | None = None) -> dict[str, Any]:
  """Pushes `blocks` through `streamer`, printing a `bar` every `every_s` seconds of audio (in
  place on a terminal); returns every frame's outputs {name: [T, 2]}, the push latencies [s] and
  with `va` the VA frames handed over ('va' [T', 2]).

  `va`: the current VA frames the mono model reads, taken block by block with the audio they
  cover (memory follows the audio heard, not the VA list's times).
  """
  frames, latencies, done, samples, heard = [], [], 0, 0, []
  every = max(round(every_s * frame_hz), 1)
  live = out.isatty()
  for block in blocks:
    kwargs = {}
    samples += block.shape[-1]
    if va is not None:
      heard.append(va.take(samples * frame_hz // SAMPLE_RATE - va.frame))
      kwargs['va'] = heard[-1]
    start = time.perf_counter()
    result = streamer.push(block, **kwargs)
    latencies.append(time.perf_counter() - start)
    n = len(next(iter(result.values())))
    for i in range(n):
      if (done + i) % every == 0:
        line = bar({k: v[i] for k, v in result.items()}, (done + i) / frame_hz)
        out.write(f'\r{line}' if live else f'{line}\n')
        out.flush()
    done += n
    frames.append(result)
  if live:
    out.write('\n')
  outputs = {k: np.concatenate([f[k] for f in frames]) for k in frames[0]} if frames else {}
  result = {'outputs': outputs, 'latency_s': np.asarray(latencies)}
  if va is not None:
    result['va'] = np.concatenate(heard) if heard else np.zeros((0, 2), np.float32)
  return result


def model_config(config, model_dir=None):
  """The `config.model` a stream will run: the configured one, or a converted model's (read from
  its config.json alone, before any weights)."""
  if not model_dir:
    return config.model
  stored = pretrained.read_config(model_dir)
  if 'model' not in stored:
    raise errors.InputError(f'{model_dir}: a converted {stored.get("name")!r} encoder, not a VAP '
                            'model')
  return ml_collections.ConfigDict(stored['model'])


def check_va(model_cfg, va_list) -> None:
  """Refuses a missing VA list for a model that reads the current voice activity (the mono model),
  and one given to a model that hears audio only (the stereo model)."""
  reads_va = 'va' in factory.model_class(model_cfg).inputs
  if reads_va and va_list is None:
    raise errors.UserError('the model reads the current voice activity (the mono model): give '
                           '--va')
  if va_list is not None and not reads_va:
    raise errors.UserError('--va: this model hears audio only (the stereo model); stream '
                           'without --va')


def stream(model, config, audio: str, *, va_list=None, context_s: float | None = None,
           pace: bool = True, output=None, source: str = '',
           log: IO[str] = sys.stderr) -> dict[str, Any]:
  """A ModelState live on `audio` (a file, '-' for raw 16-bit stereo PCM at 16 kHz on stdin,
  'mic' for a 2-channel input device): the terminal bar on stdout, the latency on `log`, and with
  `output` the frames written as predict writes them (their page naming `source`, the model's
  checkpoint). Returns `run`'s result."""
  check_va(config.model, va_list)
  frame_hz = config.model.frame_hz
  duration = None  # a file's: its VA list is checked against it
  if audio == '-':
    blocks = pcm_source(sys.stdin.buffer)
  elif audio == 'mic':
    blocks = mic_source()
  else:
    predict.notice_rate(audio)
    wave = audio_lib.read_stereo(audio, sample_rate=SAMPLE_RATE)
    duration = len(wave) / SAMPLE_RATE
    blocks = wave_source(wave, pace=pace)
  va = None
  if va_list is not None:
    va = va_lib.VAFrameStream(va_list, frame_hz, source=audio, duration_s=duration)
  streamer = inference.streamer_for(model.model(), model.objective, config, context_s)
  print(f'{streamer.context / frame_hz:g} s of attention context', file=log)
  gc.freeze()  # the startup's objects out of the collector's way: steadier push latency
  result = run(streamer, blocks, frame_hz, va=va)
  ms = result['latency_s'] * 1000
  if len(ms):
    print(f'{len(ms)} pushes: latency median {np.median(ms):.2f} ms, p99 '
          f'{np.percentile(ms, 99):.2f} ms', file=log)
  if output and result['outputs']:
    outputs = result['outputs']
    frames = len(next(iter(outputs.values())))
    heard = np.zeros((frames, 2), np.float32) if va is None else result['va'][:frames]
    events = {} if va is None else predict.events_of(config, heard, frames)
    live_input = audio in ('-', 'mic')
    stem = 'stream' if live_input else pathlib.Path(audio).stem
    legend = {**({} if live_input else {'file': audio}), **predict.legend_of(config, source)}
    written = predict.write({'frame_hz': frame_hz, 'va': heard, 'events': events, **outputs},
                            output, stem, audio=None if live_input else audio, legend=legend)
    print('written: ' + ', '.join(map(str, predict.written_paths(written))), file=log)
  return result
