"""F0 tracks for the stored corpora: librosa's pYIN, once per conversation at build time."""

import numpy as np

F0_HZ = 100  # stored F0 frame rate (10 ms hop)
F0_RANGE = (50.0, 500.0)  # Hz searched by pYIN: covers adult male to child speech


def pyin_f0(audio: np.ndarray, sample_rate: int) -> np.ndarray:
  """F0 in Hz per channel at `F0_HZ`, 0 where unvoiced: audio [S, C] -> [S * F0_HZ // sample_rate, C].

  Run at the recording's own rate (8 kHz telephone audio costs half of 16 kHz). Frame t is
  centred on sample t * hop, as librosa centres its frames.
  """
  import librosa  # imported here: its first import costs seconds (numba)

  hop = sample_rate // F0_HZ
  frame_length = 2 ** int(np.ceil(np.log2(sample_rate * 0.064)))  # 64 ms: 3 periods at 50 Hz
  n = audio.shape[0] // hop
  tracks = []
  for channel in np.asarray(audio, np.float32).T:
    f0, voiced, _ = librosa.pyin(channel, fmin=F0_RANGE[0], fmax=F0_RANGE[1], sr=sample_rate,
                                 frame_length=frame_length, hop_length=hop)
    tracks.append(np.where(voiced, np.nan_to_num(f0), 0.0)[:n])
  return np.stack(tracks, axis=-1).astype(np.float32)
