"""NIST SPHERE audio (LDC's Switchboard, Fisher, CALLHOME) with embedded Shorten, in numpy/numba.

A SPHERE file is an ASCII header ("NIST_1A", its byte size, `key -type value` lines, "end_head")
followed by interleaved samples: 16-bit pcm in either byte order, 8-bit G.711 mu-law or A-law,
or pcm or mu-law compressed with Shorten (`sample_coding` "...,embedded-shorten-vX.XX"). Shorten
is Tony Robinson's lossless coder; this module decodes its format versions 1 and 2 (shorten 2.x,
NIST's SPHERE library, LDC's sph2pipe) so that no C tool has to be built.

Shorten in brief: after the magic "ajkg" and a version byte, everything is a big-endian bit stream
of Rice-like codes: `uvar(n)` is a unary high part (zeros closed by a one) then n low bits,
`var(n)` is `uvar(n + 1)` with the sign in the lowest bit, `ulong()` is `uvar(uvar(2))`. A header
(file type, channels, block size, max LPC order, number of mean blocks, skip bytes) precedes a
command loop; each audio command codes one block of one channel (channels take turns) as
residuals of a fixed polynomial (DIFF0..3) or quantised LPC predictor, over a per-channel history
that carries across blocks. u-law types code their bytes in a reordered index domain (tables
rebuilt here the way shorten's mkbshift builds them) and are mapped back on output.

The command loop runs compiled (numba, cached after its first compilation): ~15-20x the numpy
decoder it replaced (benchmarks/sphere_decode.py). Memory and time are bounded by the input:
decoding stops at the header's sample_count, and a stream decoding to more than
MAX_SAMPLES_PER_BYTE samples per channel per byte is refused.
"""

import os

import numba
import numpy as np

from convssl_jax import errors

# Shorten file types (shorten 2.x numbering).
TYPE_AU1, TYPE_S8, TYPE_U8, TYPE_S16HL, TYPE_U16HL, TYPE_S16LH, TYPE_U16LH, TYPE_ULAW, TYPE_AU2 = (
    range(9))
ULAW_TYPES = (TYPE_AU1, TYPE_ULAW, TYPE_AU2)  # decode to u-law bytes
PCM16_TYPES = (TYPE_S16HL, TYPE_S16LH)  # decode to signed 16-bit samples

# Shorten commands.
FN_DIFF0, FN_DIFF1, FN_DIFF2, FN_DIFF3, FN_QUIT, FN_BLOCKSIZE, FN_BITSHIFT, FN_QLPC, FN_ZERO = (
    range(9))
FN_VERBATIM = 9

# Code widths and constants of the format.
MAGIC = b'ajkg'
FNSIZE, ENERGYSIZE, BITSHIFTSIZE, LPCQSIZE, LPCQUANT, XBYTESIZE = 2, 3, 2, 2, 5, 7
VERBATIM_CKSIZE_SIZE, VERBATIM_BYTE_SIZE = 5, 8
NWRAP = 3  # history kept per channel, at least the DIFF3 order
MAX_BLOCK_SIZE = 65535  # ffmpeg's limit; shorten's default is 256
ULAW_SHIFTS = 13  # u-law bit shifts 0..12
NEGATIVE_ULAW_ZERO = 0x7F
INITIAL_MEAN = {TYPE_U8: 0x80, TYPE_U16HL: 0x8000, TYPE_U16LH: 0x8000}  # else 0
# Shorten streams that decode to more samples per channel than this per byte are refused: it
# bounds memory and time by the input's size. A block of digital zeros costs 5 bits, so all-zero
# audio in shorten's default 256-sample blocks gives ~410 per byte; recordings far fewer.
MAX_SAMPLES_PER_BYTE = 1024


class SphereError(errors.InputError):
  """A SPHERE file that cannot be read; the message starts with its path."""


class ShortenError(errors.InputError):
  """A corrupt or unsupported Shorten stream."""


# ---------------------------------------------------------------------------------------------
# G.711 mu-law.


def _ulaw_to_linear_table() -> np.ndarray:
  """G.711 expansion of each u-law byte to 16-bit linear (the table ffmpeg and sph2pipe use)."""
  code = ~np.arange(256) & 0xFF
  exponent, mantissa = (code >> 4) & 7, code & 0xF
  magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
  return np.where(code & 0x80, -magnitude, magnitude).astype(np.int16)


ULAW_TO_LINEAR = _ulaw_to_linear_table()
_ULAW_SEGMENT_ENDS = np.array([0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF, 0x3FFF, 0x7FFF])


def linear_to_ulaw(x) -> np.ndarray:
  """G.711 u-law bytes of 16-bit linear samples (Sun's classic coder: bias 0x84, clip 32635)."""
  x = np.asarray(x, np.int64)
  biased = np.minimum(np.abs(x), 32635) + 0x84
  segment = np.searchsorted(_ULAW_SEGMENT_ENDS, biased)
  mantissa = (biased >> (segment + 3)) & 0xF
  return (((segment << 4) | mantissa) ^ np.where(x < 0, 0x7F, 0xFF)).astype(np.uint8)


def _alaw_to_linear_table() -> np.ndarray:
  """G.711 A-law expansion of each byte to 16-bit linear (even bits inverted, then sign,
  3-bit segment, 4-bit step: the table ffmpeg and sph2pipe use)."""
  code = np.arange(256) ^ 0x55
  segment, step = (code >> 4) & 7, code & 0xF
  magnitude = np.where(segment == 0, (step << 4) + 8, ((step << 4) + 0x108) << np.maximum(
      segment - 1, 0))
  return np.where(code & 0x80, magnitude, -magnitude).astype(np.int16)


ALAW_TO_LINEAR = _alaw_to_linear_table()


def _ulaw_shift_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Shorten's u-law tables (mkbshift): max shift per byte, byte -> index, index + 128 -> byte.

  A byte's max shift is the largest s such that some multiple of 2**(s + 3) codes to it. For a
  block whose bytes all allow shift s, `inward[s]` numbers the positive bytes 0, 1, .. and the
  negative ones -1, -2, .. with the bytes allowing s first, so small steps stay small.
  """
  maxshift = np.zeros(256, np.int64)
  for shift in range(ULAW_SHIFTS):
    maxshift[linear_to_ulaw(np.arange(-32768, 32768, 1 << (shift + 3)))] = shift
  inward = np.empty((ULAW_SHIFTS, 256), np.int64)
  outward = np.empty((ULAW_SHIFTS, 256), np.int64)
  positive, negative = np.arange(255, 127, -1), np.arange(126, -1, -1)
  for shift in range(ULAW_SHIFTS):
    fits = maxshift >= shift
    pos_order = np.concatenate([positive[fits[positive]], positive[~fits[positive]]])
    neg_order = np.concatenate([negative[fits[negative]], [NEGATIVE_ULAW_ZERO],
                                negative[~fits[negative]]])
    inward[shift, pos_order] = np.arange(128)
    inward[shift, neg_order] = -1 - np.arange(128)
    outward[shift, inward[shift] + 128] = np.arange(256)
  return maxshift, inward, outward


ULAW_MAXSHIFT, ULAW_INWARD, ULAW_OUTWARD = _ulaw_shift_tables()


# ---------------------------------------------------------------------------------------------
# Shorten decoding.


@numba.njit(cache=True)
def _cdiv(a, b):
  """C's integer division (truncates toward zero), as shorten's mean arithmetic uses."""
  q = abs(a) // abs(b)
  return q if (a < 0) == (b < 0) else -q


@numba.njit(cache=True)
def _mean_offset(means, n_mean, version, bitshift):
  if n_mean == 0:
    return means[0]
  if version < 2:
    return _cdiv(means.sum(), n_mean)
  offset = _cdiv(means.sum() + n_mean // 2, n_mean)
  return offset if bitshift == 0 else (offset >> (bitshift - 1)) >> 1


def mean_offset(means: list[int], n_mean: int, version: int, bitshift: int) -> int:
  """The offset a block's DIFF0 and LPC residuals are taken around, with shorten's rounding.

  means: the last `n_mean` block means (the file type's initial mean while there are none yet,
  and for good when n_mean is 0).
  """
  return int(_mean_offset(np.asarray(means, np.int64), n_mean, version, bitshift))


@numba.njit(cache=True)
def _block_mean(x, version, bitshift):
  if version < 2:
    return _cdiv(x.sum(), x.size)
  return _cdiv(x.sum() + x.size // 2, x.size) << bitshift


def block_mean(x: np.ndarray, version: int, bitshift: int) -> int:
  """The mean a coded block adds to the running means (in the unshifted domain for v2)."""
  return int(_block_mean(np.asarray(x, np.int64), version, bitshift))


# What the compiled decoder ran into; `_decode_shorten` words them as ShortenErrors.
(_DONE, _TRUNCATED, _UNKNOWN_COMMAND, _LPC_ORDER, _BLOCK_SIZE, _BITSHIFT, _ULAW_SHIFT,
 _ULAW_INDEX, _WIDTH, _RANGE, _TOO_LONG, _UNEVEN) = range(12)
_LEADING_ZEROS = np.array([8 - v.bit_length() for v in range(256)], np.int64)  # per byte value
_MAX_STREAM_BYTES = 2**28  # keeps bit positions and codes well inside int64
_MAX_WIDTH = 32  # bits of a code's low part (shorten's residuals fit 32)
# The values each file type decodes to (the u-law types: byte codes; TYPE_ULAW: 13-bit linear).
_TYPE_RANGE = np.array([[0, 255], [-128, 127], [0, 255], [-32768, 32767], [0, 65535],
                        [-32768, 32767], [0, 65535], [-4096, 4095], [0, 255]], np.int64)


@numba.njit(cache=True)
def _uvar(data, nbits, pos, n):
  """(value, position after) of the `uvar(n)` code (n <= _MAX_WIDTH) at bit `pos` of the
  big-endian bit stream `data`; value -1 when the stream ends first."""
  high = 0
  while True:
    if pos >= nbits:
      return -1, pos
    offset = pos & 7
    rest = data[pos >> 3] & (0xFF >> offset)
    if rest:
      zeros = _LEADING_ZEROS[rest] - offset
      high += zeros
      pos += zeros + 1
      break
    high += 8 - offset
    pos += 8 - offset
  if pos + n > nbits:
    return -1, pos
  value = high
  left = n
  while left > 0:
    offset = pos & 7
    take = min(8 - offset, left)
    value = (value << take) | ((data[pos >> 3] >> (8 - offset - take)) & ((1 << take) - 1))
    pos += take
    left -= take
  return value, pos


@numba.njit(cache=True)
def _var(data, nbits, pos, n):
  """(value, position after, ok) of the signed `var(n)` code at `pos`."""
  u, pos = _uvar(data, nbits, pos, n + 1)
  return (~(u >> 1) if u & 1 else u >> 1), pos, u >= 0


@numba.njit(cache=True)
def _ulong(data, nbits, pos):
  """(value, position after) of a `ulong` code; -1 when the stream ends first, -2 when its width
  is out of range."""
  n, pos = _uvar(data, nbits, pos, 2)
  if n < 0:
    return -1, pos
  if n > _MAX_WIDTH:
    return -2, pos
  return _uvar(data, nbits, pos, n)


@numba.njit(cache=True)
def _header(data):
  """The 6 header ulongs (file type, channels, block size, max LPC order, mean blocks, skip
  bytes) of the bit stream `data`, and the position after them; -1 / -2 as `_ulong`'s."""
  values = np.empty(6, np.int64)
  pos = 0
  for i in range(6):
    values[i], pos = _ulong(data, data.size * 8, pos)
    if values[i] < 0:
      break
  return values, pos


@numba.njit(cache=True)
def _decode_body(data, pos, version, file_type, channels, block_size, max_lpc, n_mean, n_skip,
                 initial_mean, stop_at, limit, outward):
  """The `n_skip` skip bytes and command loop of a Shorten stream from bit `pos` (after the
  header):
  (samples [rows, channels] int32 as shorten writes them, TYPE_ULAW's as 13-bit linear, outcome,
  bit position, detail). Decoding stops at QUIT, or at the end of the first round of blocks
  that reaches `stop_at` samples per channel (-1: never); more than `limit` samples per channel
  is _TOO_LONG. Like shorten, a round of blocks the stream leaves unfinished is dropped.
  """
  nbits = data.size * 8
  n_wrap = max(NWRAP, max_lpc)
  lpc_offset = 1 << LPCQUANT if version >= 2 else 0
  means = np.full((channels, max(1, n_mean)), initial_mean, np.int64)
  buf = np.zeros((channels, n_wrap + MAX_BLOCK_SIZE), np.int64)  # history, then the block
  coefs = np.zeros(max(1, max_lpc), np.int64)
  out = np.empty((min(limit, max(4096, 16 * data.size // channels)) + MAX_BLOCK_SIZE, channels),
                 np.int32)
  count = np.zeros(channels, np.int64)  # samples per channel
  complete = np.zeros(channels, np.int64)  # ... at the end of the last complete round
  low, high = _TYPE_RANGE[file_type, 0], _TYPE_RANGE[file_type, 1]
  is_au = file_type == TYPE_AU1 or file_type == TYPE_AU2
  for _ in range(n_skip):
    byte, pos = _uvar(data, nbits, pos, XBYTESIZE)
    if byte < 0:
      return out[:0], _TRUNCATED, pos, 0
  bitshift, chan = 0, 0
  while True:
    cmd, pos = _uvar(data, nbits, pos, FNSIZE)
    if cmd < 0:
      return out[:0], _TRUNCATED, pos, 0
    if cmd == FN_QUIT:
      break
    if cmd <= FN_DIFF3 or cmd == FN_QLPC or cmd == FN_ZERO:
      if count[chan] + block_size > limit:
        return out[:0], _TOO_LONG, pos, limit
      x = buf[chan]  # x[:n_wrap] the history, x[n_wrap + i] the block's i-th sample
      offset = _mean_offset(means[chan], n_mean, version, bitshift)
      resn = 0
      if cmd != FN_ZERO:
        resn, pos = _uvar(data, nbits, pos, ENERGYSIZE)
        if resn < 0:
          return out[:0], _TRUNCATED, pos, 0
        if resn + 1 > _MAX_WIDTH:
          return out[:0], _WIDTH, pos, resn + 1
      order = 0
      if cmd == FN_QLPC:
        order, pos = _uvar(data, nbits, pos, LPCQSIZE)
        if order < 0:
          return out[:0], _TRUNCATED, pos, 0
        if order > max_lpc:
          return out[:0], _LPC_ORDER, pos, order
        for j in range(order):
          coefs[j], pos, ok = _var(data, nbits, pos, LPCQUANT)
          if not ok:
            return out[:0], _TRUNCATED, pos, 0
        for j in range(n_wrap - order, n_wrap):
          x[j] -= offset
      for i in range(n_wrap, n_wrap + block_size):
        r = 0
        if cmd != FN_ZERO:
          r, pos, ok = _var(data, nbits, pos, resn)
          if not ok:
            return out[:0], _TRUNCATED, pos, 0
        if cmd == FN_DIFF0:
          x[i] = r + offset
        elif cmd == FN_DIFF1:
          x[i] = r + x[i - 1]
        elif cmd == FN_DIFF2:
          x[i] = r + 2 * x[i - 1] - x[i - 2]
        elif cmd == FN_DIFF3:
          x[i] = r + 3 * (x[i - 1] - x[i - 2]) + x[i - 3]
        elif cmd == FN_QLPC:
          acc = lpc_offset
          for j in range(order):
            acc += coefs[j] * x[i - j - 1]
          x[i] = r + (acc >> LPCQUANT)
        else:
          x[i] = 0
      block = x[n_wrap:n_wrap + block_size]
      if cmd == FN_QLPC:
        block += offset
      if n_mean > 0:
        means[chan, :-1] = means[chan, 1:].copy()
        means[chan, -1] = _block_mean(block, version, bitshift)
      if count[chan] + block_size > out.shape[0]:
        grown = np.empty((min(2 * out.shape[0], limit + MAX_BLOCK_SIZE), channels), np.int32)
        grown[:out.shape[0]] = out
        out = grown
      for i in range(block_size):
        v = block[i]
        if is_au:
          if bitshift >= ULAW_SHIFTS:
            return out[:0], _ULAW_SHIFT, pos, bitshift
          index = v + 128 if file_type == TYPE_AU1 or v >= 0 else v + 129
          if index < 0 or index > 255:
            return out[:0], _ULAW_INDEX, pos, 0
          v = NEGATIVE_ULAW_ZERO if file_type == TYPE_AU2 and v == -1 else outward[bitshift, index]
        else:
          if abs(v) > high - low:  # then v << bitshift cannot overflow either
            return out[:0], _RANGE, pos, v
          v <<= bitshift
          if not low <= v <= high:
            return out[:0], _RANGE, pos, v
        out[count[chan] + i, chan] = v
      count[chan] += block_size
      x[:n_wrap] = x[block_size:block_size + n_wrap].copy()  # the last n_wrap values
      chan += 1
      if chan == channels:
        chan = 0
        complete[:] = count
        if 0 <= stop_at <= count[channels - 1]:
          break
    elif cmd == FN_BLOCKSIZE:
      block_size, pos = _ulong(data, nbits, pos)
      if block_size == -1:
        return out[:0], _TRUNCATED, pos, 0
      if not 1 <= block_size <= MAX_BLOCK_SIZE:
        return out[:0], _BLOCK_SIZE, pos, block_size
    elif cmd == FN_BITSHIFT:
      bitshift, pos = _uvar(data, nbits, pos, BITSHIFTSIZE)
      if bitshift < 0:
        return out[:0], _TRUNCATED, pos, 0
      if bitshift > 32:
        return out[:0], _BITSHIFT, pos, bitshift
    elif cmd == FN_VERBATIM:  # a copy of the original file's header bytes: not samples
      size, pos = _uvar(data, nbits, pos, VERBATIM_CKSIZE_SIZE)
      for _ in range(size):
        byte, pos = _uvar(data, nbits, pos, VERBATIM_BYTE_SIZE)
        if byte < 0:
          return out[:0], _TRUNCATED, pos, 0
      if size < 0:
        return out[:0], _TRUNCATED, pos, 0
    else:
      return out[:0], _UNKNOWN_COMMAND, pos, cmd
  rows = complete[channels - 1]
  for c in range(channels):
    if complete[c] != rows:
      return out[:0], _UNEVEN, pos, c
  return out[:rows], _DONE, pos, 0


def _decode_shorten(data: bytes, stop_at: int = -1) -> tuple[np.ndarray, int]:
  """Samples [S, C] int32 as shorten would write them, and the stream's file type (see
  `decode_shorten`); decoding stops after the round of blocks that reaches `stop_at` samples
  per channel (-1: at the stream's QUIT)."""
  if data[:4] != MAGIC:
    raise ShortenError(f'bad magic {data[:4]!r}, expected {MAGIC!r}')
  if len(data) < 5:
    raise ShortenError('stream ends early (no version byte)')
  version = data[4]
  if version not in (1, 2):
    raise ShortenError(f'unsupported Shorten version {version} (1 and 2 are)')
  if len(data) > _MAX_STREAM_BYTES:
    raise ShortenError(f'stream too large ({len(data)} bytes; at most {_MAX_STREAM_BYTES})')
  stream = np.frombuffer(data, np.uint8, offset=5)
  nbits = stream.size * 8
  header, pos = _header(stream)
  if header.min() == -1:
    raise ShortenError(f'stream ends early (at bit {pos} of {nbits})')
  file_type, channels, block_size, max_lpc, n_mean, n_skip = (int(v) for v in header)
  if header.min() < 0 or file_type > TYPE_AU2:
    raise ShortenError(f'unsupported file type {file_type}' if header.min() >= 0 else
                       f'header value wider than {_MAX_WIDTH} bits')
  if not 1 <= channels <= 64 or not 1 <= block_size <= MAX_BLOCK_SIZE or max_lpc > 1024 or (
      n_mean > 32768):
    raise ShortenError(f'implausible header: {channels} channels, block size {block_size}, '
                       f'max LPC order {max_lpc}, {n_mean} mean blocks')
  limit = MAX_SAMPLES_PER_BYTE * len(data)
  samples, outcome, pos, detail = _decode_body(
      stream, pos, version, file_type, channels, block_size, max_lpc, n_mean, n_skip,
      INITIAL_MEAN.get(file_type, 0), stop_at, limit, ULAW_OUTWARD)
  if outcome != _DONE:
    raise ShortenError({
        _TRUNCATED: f'stream ends early (at bit {pos} of {nbits})',
        _UNKNOWN_COMMAND: f'unknown command {detail} at bit {pos}',
        _LPC_ORDER: f'LPC order {detail} exceeds the header maximum {max_lpc}',
        _BLOCK_SIZE: f'block size {detail} is out of range',
        _BITSHIFT: f'bit shift {detail} is out of range',
        _ULAW_SHIFT: f'u-law bit shift {detail} is out of range',
        _ULAW_INDEX: 'u-law sample index out of range',
        _WIDTH: f'residual width {detail} bits is out of range',
        _RANGE: f'sample {detail} at bit {pos} is out of range for file type {file_type}',
        _TOO_LONG: f'decodes to more than {detail} samples per channel ({MAX_SAMPLES_PER_BYTE} '
                   'per byte of stream): not a plausible recording',
        _UNEVEN: f'channel {detail} ends at another sample than the last channel',
    }[outcome])
  if file_type == TYPE_ULAW:
    samples = linear_to_ulaw(samples.astype(np.int64) << 3).astype(np.int32)
  return samples, file_type


def decode_shorten(data: bytes) -> np.ndarray:
  """A Shorten stream (versions 1, 2) -> [S, C] int32, the sample values shorten writes out.

  16-bit types give signed (S16) or unsigned (U16) samples, 8-bit ones signed or unsigned bytes,
  and the u-law types (AU1, AU2, ULAW) give G.711 u-law bytes 0..255. A stream that would
  decode to more than MAX_SAMPLES_PER_BYTE samples per channel per byte is refused: memory and
  time stay bounded by the input's size.
  """
  return _decode_shorten(data)[0]


# ---------------------------------------------------------------------------------------------
# SPHERE.


def _parse_field(line: str, path) -> tuple[str, int | float | str]:
  """One `key -type value` header line; -i int, -r real, -sN string of N characters."""
  parts = line.split(' ', 2)
  if len(parts) < 3 or not parts[1].startswith('-') or len(parts[1]) < 2:
    raise SphereError(f'{path}: malformed SPHERE header line {line!r}')
  key, kind, value = parts
  try:
    if kind == '-i':
      return key, int(value)
    if kind == '-r':
      return key, float(value)
    if kind[1] == 's':
      return key, value[:int(kind[2:])] if len(kind) > 2 else value
  except ValueError:
    pass
  raise SphereError(f'{path}: malformed SPHERE header line {line!r}')


def _header_size(head: bytes, path) -> int:
  """The header's size in bytes from its second line (where the samples start)."""
  if not head.startswith(b'NIST_1A\n'):
    raise SphereError(f'{path}: not a NIST SPHERE file (no NIST_1A magic)')
  line = head[8:].split(b'\n', 1)
  if len(line) < 2:
    raise SphereError(f'{path}: truncated SPHERE header')
  try:
    return int(line[0])
  except ValueError:
    raise SphereError(f'{path}: bad SPHERE header size {line[0]!r}') from None


def _parse_header(data: bytes, path) -> tuple[dict, int]:
  """Header fields and the header's size in bytes."""
  size = _header_size(data, path)
  if len(data) < size:
    raise SphereError(f'{path}: truncated SPHERE header ({len(data)} of {size} bytes)')
  fields = {}
  for line in data[:size].decode('latin-1').split('\n')[2:]:
    line = line.strip()
    if line == 'end_head':
      return fields, size
    if line and not line.startswith(';'):
      key, value = _parse_field(line, path)
      fields[key] = value
  raise SphereError(f'{path}: truncated SPHERE header (no end_head within {size} bytes)')


def read_sphere_header(path) -> dict[str, int | float | str]:
  """The header fields of a SPHERE file, e.g. {'sample_rate': 8000, 'channel_count': 2, ..}."""
  path = os.fspath(path)
  with open(path, 'rb') as f:
    head = f.read(1024)
    head += f.read(max(0, _header_size(head, path) - len(head)))
  return _parse_header(head, path)[0]


def _coding(fields: dict, path) -> tuple[str, bool]:
  """('pcm' | 'ulaw' | 'alaw', whether Shorten-compressed) from `sample_coding`."""
  coding = str(fields.get('sample_coding', 'pcm')).strip().lower()
  base, _, compression = coding.partition(',')
  base = {'pcm': 'pcm', 'ulaw': 'ulaw', 'mu-law': 'ulaw', 'alaw': 'alaw', 'a-law': 'alaw'}.get(
      base)
  if base is None or (compression and not compression.startswith('embedded-shorten')):
    raise SphereError(f'{path}: unknown sample_coding {coding!r} (pcm, ulaw, mu-law, alaw or '
                      'a-law; pcm and u-law optionally ,embedded-shorten-vX.XX)')
  if base == 'alaw' and compression:  # Shorten 2 has no A-law file types
    raise SphereError(f'{path}: sample_coding {coding!r}: Shorten-compressed A-law is not '
                      'supported; convert the file first (sph2pipe -f wav)')
  return base, bool(compression)


def read_sphere(path) -> tuple[np.ndarray, int]:
  """A SPHERE file -> (samples [S, C] int16, sample rate); u-law and A-law are expanded to
  16-bit linear (G.711)."""
  path = os.fspath(path)
  with open(path, 'rb') as f:
    data = f.read()
  fields, size = _parse_header(data, path)
  base, shortened = _coding(fields, path)
  channels = fields.get('channel_count', 1)
  rate = fields.get('sample_rate')
  n_bytes = fields.get('sample_n_bytes', 2 if base == 'pcm' else 1)
  count = fields.get('sample_count')
  if not isinstance(rate, int) or rate <= 0 or not isinstance(channels, int) or channels < 1:
    raise SphereError(f'{path}: missing or bad sample_rate / channel_count')
  if count is not None and (not isinstance(count, int) or count < 0):
    raise SphereError(f'{path}: bad sample_count {count!r} (a non-negative -i integer)')
  if n_bytes != (2 if base == 'pcm' else 1):
    raise SphereError(f'{path}: {n_bytes}-byte {base} samples are not supported')
  body = data[size:]

  if shortened:
    try:
      samples, file_type = _decode_shorten(body, -1 if count is None else count)
    except ShortenError as err:
      raise SphereError(f'{path}: corrupt embedded Shorten stream: {err}') from err
    expected = PCM16_TYPES if base == 'pcm' else ULAW_TYPES
    if file_type not in expected or samples.shape[1] != channels:
      raise SphereError(f'{path}: Shorten stream (type {file_type}, {samples.shape[1]} channels) '
                        f'does not match the header ({base}, {channels} channels)')
    available = samples.shape[0]
  else:
    available = len(body) // (n_bytes * channels)
  if count is None:
    count = available
  if available < count:
    raise SphereError(f'{path}: truncated sample data ({available} of {count} samples per '
                      'channel)')

  if shortened:  # the decoder checked that the samples fit their 16 or 8 bits
    samples = samples[:count]
  elif base == 'pcm':
    order = fields.get('sample_byte_format')
    if order not in ('01', '10'):
      raise SphereError(f'{path}: pcm needs sample_byte_format 01 or 10, not {order!r}')
    dtype = '<i2' if order == '01' else '>i2'
    samples = np.frombuffer(body, dtype, count * channels).reshape(count, channels)
  else:
    samples = np.frombuffer(body, np.uint8, count * channels).reshape(count, channels)
  expand = {'ulaw': ULAW_TO_LINEAR, 'alaw': ALAW_TO_LINEAR}.get(base)
  return (samples.astype(np.int16) if expand is None else expand[samples]), rate
