"""A Shorten encoder and SPHERE writer, for tests and fixtures of `sphere.read_sphere`.

The encoder writes valid Shorten (versions 1 and 2) the way shorten 2.x does: per block and
channel it finds the exploitable bit shift (or the u-law index mapping), the running-mean offset,
and picks the cheapest of the allowed predictors (DIFF0..3, optionally a least-squares quantised
LPC) with the Rice width that minimises the block's bits. Its state (history, means, bit shift)
mirrors the decoder's exactly, so any choice it makes decodes losslessly.
"""

import os

import numpy as np

from convssl_jax.data import sphere as sph

_LPC_COEF_LIMIT = 1 << 10


class _BitWriter:
  """Shorten's codes, collected as (value, n) pairs and packed into bits at the end."""

  def __init__(self):
    self._values, self._widths = [], []

  def uvar(self, values, n: int):
    values = np.atleast_1d(np.asarray(values, np.int64))
    self._values.append(values)
    self._widths.append(np.full(values.size, n, np.int64))

  def var(self, values, n: int):
    values = np.asarray(values, np.int64)
    self.uvar(np.where(values < 0, (~values << 1) | 1, values << 1), n + 1)

  def ulong(self, value: int):
    n = int(value).bit_length()
    self.uvar(n, 2)
    self.uvar(value, n)

  def getvalue(self) -> bytes:
    """The codes packed MSB first and padded to whole 32-bit words, as shorten writes them."""
    values, widths = np.concatenate(self._values), np.concatenate(self._widths)
    high = values >> widths
    ends = np.cumsum(high + 1 + widths)
    ones = ends - widths - 1
    bits = np.zeros(-(-int(ends[-1]) // 32) * 32, np.uint8)
    bits[ones] = 1
    for j in range(int(widths.max())):
      sel = np.flatnonzero(widths > j)
      bits[ones[sel] + 1 + j] = (values[sel] >> (widths[sel] - 1 - j)) & 1
    return np.packbits(bits).tobytes()


def _var_bits(residual: np.ndarray) -> tuple[int, int]:
  """(bits, resn) of the cheapest `var(resn)` coding of a block's residuals."""
  u = np.where(residual < 0, (~residual << 1) | 1, residual << 1)
  widths = np.arange(1, 33)
  costs = (u[None, :] >> widths[:, None]).sum(axis=1) + u.size * (widths + 1)
  best = int(np.argmin(costs))
  return int(costs[best]), best


def _fixed_residual(order: int, x: np.ndarray, history: np.ndarray, offset: int) -> np.ndarray:
  """DIFF0 (around the mean offset) to DIFF3 residuals, continuing from the history."""
  if order == 0:
    return x - offset
  return np.diff(np.concatenate([history[-3:], x]), order)[-x.size:]


def _lpc_residual(x: np.ndarray, history: np.ndarray, order: int,
                  lpc_offset: int) -> tuple[np.ndarray, np.ndarray]:
  """Least-squares LPC coefficients quantised to LPCQUANT bits, and the exact residual."""
  ext = np.concatenate([history[history.size - order:], x])
  lags = np.stack([ext[order - j - 1:ext.size - j - 1] for j in range(order)], axis=1)
  coefs, *_ = np.linalg.lstsq(lags.astype(np.float64), x.astype(np.float64), rcond=None)
  coefs = np.clip(np.round(coefs * (1 << sph.LPCQUANT)), -_LPC_COEF_LIMIT, _LPC_COEF_LIMIT)
  coefs = coefs.astype(np.int64)
  return coefs, x - ((lpc_offset + lags @ coefs) >> sph.LPCQUANT)


def _to_internal(codes: np.ndarray, file_type: int) -> np.ndarray:
  """Output-domain samples -> the values shorten codes (before any bit shift)."""
  if file_type == sph.TYPE_ULAW:
    return sph.ULAW_TO_LINEAR[codes].astype(np.int64) >> 3
  return codes


def _find_bitshift(x: np.ndarray, file_type: int) -> tuple[int, np.ndarray]:
  """Shorten's find_bitshift: the shift (32 for an all-zero block) and the values it codes."""
  if file_type in (sph.TYPE_AU1, sph.TYPE_AU2):
    shift = int(sph.ULAW_MAXSHIFT[x].min())
    index = sph.ULAW_INWARD[shift][x]
    if file_type == sph.TYPE_AU2:
      index = np.where(x == sph.NEGATIVE_ULAW_ZERO, -1, np.where(x > 0x7F, index, index - 1))
    return shift, index
  mask = int(np.bitwise_or.reduce(x))
  if mask == 0:
    return 32, x
  shift = (mask & -mask).bit_length() - 1
  return shift, x >> shift


def encode_shorten(samples, file_type: int, *, block_size: int = 256,
                   predictors=(0, 1, 2, 3), lpc_order: int = 0, nmean: int | None = None,
                   version: int = 2, verbatim: bytes = b'') -> bytes:
  """[S, C] samples, in the domain `decode_shorten` returns, -> a Shorten stream.

  predictors: the DIFF orders a block may use; lpc_order > 0 also allows FN_QLPC of that order.
  nmean: blocks in the running mean (shorten's default: 4 for version 2, none for u-law bytes).
  verbatim: bytes stored as an FN_VERBATIM chunk after the header (shorten keeps a WAV header so).
  """
  samples = np.asarray(samples, np.int64)
  if samples.ndim != 2 or version not in (1, 2) or not (predictors or lpc_order) or not (
      1 <= block_size <= sph.MAX_BLOCK_SIZE):
    raise ValueError('need [S, C] samples, version 1 or 2, a predictor and a valid block size')
  is_au = file_type in (sph.TYPE_AU1, sph.TYPE_AU2)
  if nmean is None:
    nmean = 0 if is_au or version < 2 else 4
  if is_au and nmean:
    raise ValueError('shorten keeps no running mean for u-law bytes (AU1, AU2)')
  n_samples, channels = samples.shape
  n_wrap = max(sph.NWRAP, lpc_order)
  lpc_offset = 1 << sph.LPCQUANT if version >= 2 else 0

  out = _BitWriter()
  for value in (file_type, channels, block_size, lpc_order, nmean, 0):
    out.ulong(value)
  if verbatim:
    out.uvar(sph.FN_VERBATIM, sph.FNSIZE)
    out.uvar(len(verbatim), sph.VERBATIM_CKSIZE_SIZE)
    out.uvar(np.frombuffer(verbatim, np.uint8), sph.VERBATIM_BYTE_SIZE)

  means = [[sph.INITIAL_MEAN.get(file_type, 0)] * max(1, nmean) for _ in range(channels)]
  history = [np.zeros(n_wrap, np.int64) for _ in range(channels)]
  last_shift, size = 0, block_size
  for start in range(0, n_samples, block_size):
    block = samples[start:start + block_size]
    if len(block) != size:
      size = len(block)
      out.uvar(sph.FN_BLOCKSIZE, sph.FNSIZE)
      out.ulong(size)
    for chan in range(channels):
      shift, x = _find_bitshift(_to_internal(block[:, chan], file_type), file_type)
      zero = shift == 32
      if zero:
        shift = last_shift
      offset = sph.mean_offset(means[chan], nmean, version, shift)
      hist = history[chan]
      if shift != last_shift:
        out.uvar(sph.FN_BITSHIFT, sph.FNSIZE)
        out.uvar(shift, sph.BITSHIFTSIZE)
        last_shift = shift
      if zero:
        out.uvar(sph.FN_ZERO, sph.FNSIZE)
      else:
        candidates = [(*_var_bits(r), order, r)
                      for order in predictors
                      for r in [_fixed_residual(order, x, hist, offset)]]
        if lpc_order:
          lpc_hist = hist.copy()
          lpc_hist[n_wrap - lpc_order:] -= offset
          coefs, r = _lpc_residual(x - offset, lpc_hist, lpc_order, lpc_offset)
          bits, resn = _var_bits(r)
          candidates.append((bits + 8 * lpc_order, resn, sph.FN_QLPC, r))
        _, resn, cmd, residual = min(candidates, key=lambda c: c[0])
        out.uvar(cmd, sph.FNSIZE)
        out.uvar(resn, sph.ENERGYSIZE)
        if cmd == sph.FN_QLPC:
          out.uvar(lpc_order, sph.LPCQSIZE)
          out.var(coefs, sph.LPCQUANT)
          hist = lpc_hist
        out.var(residual, resn)
      if nmean > 0:
        means[chan] = means[chan][1:] + [sph.block_mean(x, version, shift)]
      history[chan] = np.concatenate([hist, x])[-n_wrap:]
  out.uvar(sph.FN_QUIT, sph.FNSIZE)
  return sph.MAGIC + bytes([version]) + out.getvalue()


def _header(fields: dict[str, int | str]) -> bytes:
  """A 1024-byte SPHERE header holding `fields`."""
  lines = ['NIST_1A', '   1024']
  for key, value in fields.items():
    kind = '-i' if isinstance(value, int) else f'-s{len(value)}'
    lines.append(f'{key} {kind} {value}')
  text = ('\n'.join(lines + ['end_head']) + '\n').encode('ascii')
  if len(text) > 1024:
    raise ValueError('SPHERE header fields exceed 1024 bytes')
  return text + b' ' * (1024 - len(text))


def write_sphere(path, samples, sample_rate: int, coding: str = 'pcm', *,
                 byte_order: str = '01', **shorten_options):
  """Write int16 [S, C] samples as a SPHERE file (1024-byte header, interleaved channels).

  coding: 'pcm', 'ulaw', 'pcm,embedded-shorten-v2.00' or 'ulaw,embedded-shorten-v2.00'; u-law
  quantises the samples with G.711. byte_order is pcm's '01' (little) or '10' (big endian);
  shorten_options go to `encode_shorten` (file_type overrides S16LH/S16HL or AU2).
  """
  samples = np.asarray(samples)
  if samples.ndim != 2 or samples.dtype != np.int16 or byte_order not in ('01', '10'):
    raise ValueError('need int16 [S, C] samples and byte_order 01 or 10')
  base, _, compression = coding.partition(',')
  if base not in ('pcm', 'ulaw') or compression not in ('', 'embedded-shorten-v2.00'):
    raise ValueError(f'unsupported coding {coding!r}')
  fields = {'sample_count': samples.shape[0], 'channel_count': samples.shape[1],
            'sample_rate': sample_rate, 'sample_n_bytes': 2 if base == 'pcm' else 1,
            'sample_coding': coding, 'sample_byte_format': byte_order if base == 'pcm' else '1',
            'sample_sig_bits': 16 if base == 'pcm' else 8}
  values = samples if base == 'pcm' else sph.linear_to_ulaw(samples)
  if compression:
    default_type = {'01': sph.TYPE_S16LH, '10': sph.TYPE_S16HL}[byte_order]
    file_type = shorten_options.pop('file_type', default_type if base == 'pcm' else sph.TYPE_AU2)
    body = encode_shorten(values, file_type, **shorten_options)
  elif base == 'pcm':
    body = values.astype('<i2' if byte_order == '01' else '>i2').tobytes()
  else:
    body = values.tobytes()
  with open(os.fspath(path), 'wb') as f:
    f.write(_header(fields) + body)
