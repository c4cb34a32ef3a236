"""Speech-like test audio: espeak-ng's synthetic speech as a two-speaker dialog.

espeak-ng (Debian: `apt-get install espeak-ng`) is optional: `available()` says whether it is
on the PATH, and callers skip (visibly) without it.
"""

import pathlib
import shutil
import subprocess
import tempfile

import numpy as np
import soundfile as sf
import soxr

SENTENCES = (
    'I think we should leave before the traffic gets bad.',
    'Really? I was hoping to stay a little longer.',
    'Well, the game starts at seven, and it takes an hour to drive there.',
    'Okay, okay. Let me just finish my coffee first.',
    'Did you remember to buy the tickets last week?',
    'Of course I did, they are in my jacket pocket.',
    'Good, because the box office closes early on Sundays.',
    'Mm hm. Do you want me to drive, or will you?',
    'You drive. I always get lost on those small roads near the river.',
    'Fine, but you are choosing the music this time.',
)
VOICES = (('en-us', 45), ('en-us+f3', 60))  # (voice, pitch 0-99): a low and a high speaker


def available() -> bool:
  return shutil.which('espeak-ng') is not None


def utterance(text: str, voice: str, pitch: int, sample_rate: int) -> np.ndarray:
  """espeak-ng's speech for `text`, float32 mono at `sample_rate`."""
  with tempfile.TemporaryDirectory() as tmp:
    path = pathlib.Path(tmp) / 'u.wav'
    subprocess.run(['espeak-ng', '-v', voice, '-p', str(pitch), '-s', '165', '-w', str(path),
                    text], check=True, capture_output=True)
    audio, rate = sf.read(path, dtype='float32')
  return soxr.resample(audio, rate, sample_rate).astype(np.float32)


def dialog(seconds: float, sample_rate: int, seed: int = 0) -> np.ndarray:
  """[S, 2] float32: the two voices taking turns with the sentences (0.2-0.8 s pauses, some
  overlap), a little noise and cross-talk, `seconds` long."""
  rng = np.random.default_rng(seed)
  n = int(seconds * sample_rate)
  audio = np.zeros((n, 2), np.float32)
  t, turn = 0.2, 0
  while t < seconds:
    voice, pitch = VOICES[turn % 2]
    u = utterance(SENTENCES[rng.integers(len(SENTENCES))], voice, pitch, sample_rate)
    start = int(t * sample_rate)
    stop = min(n, start + len(u))
    audio[start:stop, turn % 2] += 0.5 * u[:stop - start] / max(np.abs(u).max(), 1e-6)
    t += len(u) / sample_rate + rng.uniform(-0.3, 0.8)
    turn += 1
  audio += 0.002 * rng.standard_normal(audio.shape).astype(np.float32)
  return audio + 0.05 * audio[:, ::-1]
