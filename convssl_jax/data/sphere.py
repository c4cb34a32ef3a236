"""NIST SPHERE audio (LDC's Switchboard, Fisher, CALLHOME) with embedded Shorten, in numpy.

A SPHERE file is an ASCII header ("NIST_1A", its byte size, `key -type value` lines, "end_head")
followed by interleaved samples: 16-bit pcm in either byte order, 8-bit G.711 mu-law, or either of
those compressed with Shorten (`sample_coding` "...,embedded-shorten-vX.XX"). Shorten is Tony
Robinson's lossless coder; this module decodes its format versions 1 and 2 (shorten 2.x, NIST's
SPHERE library, LDC's sph2pipe) so that no C tool has to be built.

Shorten in brief: after the magic "ajkg" and a version byte, everything is a big-endian bit stream
of Rice-like codes: `uvar(n)` is a unary high part (zeros closed by a one) then n low bits,
`var(n)` is `uvar(n + 1)` with the sign in the lowest bit, `ulong()` is `uvar(uvar(2))`. A header
(file type, channels, block size, max LPC order, number of mean blocks, skip bytes) precedes a
command loop; each audio command codes one block of one channel (channels take turns) as
residuals of a fixed polynomial (DIFF0..3) or quantised LPC predictor, over a per-channel history
that carries across blocks. u-law types code their bytes in a reordered index domain (tables
rebuilt here the way shorten's mkbshift builds them) and are mapped back on output.
"""

import os

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


class _BitReader:
  """Shorten's codes read from a whole in-memory bit stream.

  `_next[p]` is the position of the first one bit at or after p (`nbits` where there is none),
  so a unary part costs one lookup and a block of residuals is a tight chase through `_next`;
  their low bits are then gathered with numpy from `_words`, the 40 bits starting at each byte.
  """

  def __init__(self, stream: bytes):
    bits = np.unpackbits(np.frombuffer(stream, np.uint8)).view(bool)
    self.nbits = nbits = bits.size
    if nbits >= 2**31 - 64:
      raise ShortenError('stream too large')
    following = np.full(nbits + 1, nbits, np.int32)
    backwards = following[nbits - 1::-1] if nbits else following[:0]
    np.copyto(backwards, np.arange(nbits - 1, -1, -1, dtype=np.int32), where=bits[::-1])
    np.minimum.accumulate(backwards, out=backwards)
    self._next = memoryview(following)
    self._stream = stream
    b = np.frombuffer(stream + bytes(4), np.uint8).astype(np.int64)
    self._words = (b[:-4] << 32) | (b[1:-3] << 24) | (b[2:-2] << 16) | (b[3:-1] << 8) | b[4:]
    self.pos = 0

  def _truncated(self) -> ShortenError:
    return ShortenError(f'stream ends early (at bit {self.pos} of {self.nbits})')

  def uvar(self, n: int) -> int:
    """One `uvar(n)` code."""
    if self.pos > self.nbits:
      raise self._truncated()
    one = self._next[self.pos]
    end = one + 1 + n
    if end > self.nbits:
      raise self._truncated()
    high = one - self.pos
    low = 0
    if n:
      chunk = int.from_bytes(self._stream[(one + 1) >> 3:(end + 7) >> 3], 'big')
      low = (chunk >> (-end & 7)) & ((1 << n) - 1)
    self.pos = end
    return (high << n) | low

  def var(self, n: int) -> int:
    """One signed `var(n)` code."""
    u = self.uvar(n + 1)
    return ~(u >> 1) if u & 1 else u >> 1

  def ulong(self) -> int:
    return self.uvar(self.uvar(2))

  def residuals(self, count: int, n: int) -> np.ndarray:
    """`count` (>= 1) consecutive `var(n)` codes as int64."""
    width = n + 1
    if width > 33:
      raise ShortenError(f'residual width {width} bits is out of range')
    following, p, step = self._next, self.pos, width + 1
    try:
      bounds = [p] + [(p := following[p] + step) for _ in range(count)]
    except IndexError:
      raise self._truncated() from None
    if p > self.nbits:
      raise self._truncated()
    bounds = np.array(bounds, np.int64)  # where each code starts, then where the last one ends
    high = bounds[1:] - bounds[:-1] - step
    low_start = bounds[1:] - width
    low = (self._words[low_start >> 3] >> (40 - (low_start & 7) - width)) & ((1 << width) - 1)
    u = (high << width) | low
    self.pos = p
    return (u >> 1) ^ -(u & 1)


def _cdiv(a: int, b: int) -> int:
  """C's integer division (truncates toward zero), as shorten's mean arithmetic uses."""
  q = abs(a) // abs(b)
  return q if (a < 0) == (b < 0) else -q


def mean_offset(means: list[int], n_mean: int, version: int, bitshift: int) -> int:
  """The offset a block's DIFF0 and LPC residuals are taken around, with shorten's rounding.

  means: the last `n_mean` block means (the file type's initial mean while there are none yet,
  and for good when n_mean is 0).
  """
  if n_mean == 0:
    return means[0]
  if version < 2:
    return _cdiv(sum(means), n_mean)
  offset = _cdiv(sum(means) + n_mean // 2, n_mean)
  return offset if bitshift == 0 else (offset >> (bitshift - 1)) >> 1


def block_mean(x: np.ndarray, version: int, bitshift: int) -> int:
  """The mean a coded block adds to the running means (in the unshifted domain for v2)."""
  if version < 2:
    return _cdiv(int(x.sum()), x.size)
  return _cdiv(int(x.sum()) + x.size // 2, x.size) << bitshift


def _predict_fixed(order: int, residual: np.ndarray, history: np.ndarray,
                   offset: int) -> np.ndarray:
  """DIFF0..3: undo an `order`-th difference with cumulative sums seeded from the history."""
  if order == 0:
    return residual + offset
  h1, h2, h3 = int(history[-1]), int(history[-2]), int(history[-3])
  increments = residual
  if order == 3:
    increments = (h1 - 2 * h2 + h3) + np.cumsum(increments)
  if order >= 2:
    increments = (h1 - h2) + np.cumsum(increments)
  return h1 + np.cumsum(increments)


def _predict_lpc(residual: np.ndarray, coefs: list[int], history: np.ndarray,
                 lpc_offset: int) -> np.ndarray:
  """QLPC: x[i] = r[i] + ((lpc_offset + sum_j c_j x[i-j-1]) >> LPCQUANT), sample by sample.

  A plain loop: NIST and LDC streams never use LPC (shorten's default max order is 0).
  """
  order = len(coefs)
  x = [int(v) for v in history[len(history) - order:]] + residual.tolist()
  for i in range(order, len(x)):
    acc = lpc_offset
    for j, c in enumerate(coefs):
      acc += c * x[i - j - 1]
    x[i] += acc >> LPCQUANT
  return np.array(x[order:], np.int64)


def _output(x: np.ndarray, bitshift: int, file_type: int) -> np.ndarray:
  """Shorten's fix_bitshift and output conversion: shift back up, u-law indices to bytes."""
  if file_type in (TYPE_AU1, TYPE_AU2):
    if bitshift >= ULAW_SHIFTS:
      raise ShortenError(f'u-law bit shift {bitshift} is out of range')
    index = x + 128 if file_type == TYPE_AU1 else np.where(x >= 0, x + 128, x + 129)
    if index.size and (index.min() < 0 or index.max() > 255):
      raise ShortenError('u-law sample index out of range')
    codes = ULAW_OUTWARD[bitshift][index]
    return codes if file_type == TYPE_AU1 else np.where(x == -1, NEGATIVE_ULAW_ZERO, codes)
  x = x << bitshift
  if file_type == TYPE_ULAW:  # 13-bit linear (u-law expansion >> 3)
    return linear_to_ulaw(x << 3).astype(np.int64)
  return x


def _decode_shorten(data: bytes) -> tuple[np.ndarray, int]:
  """Samples [S, C] int64 as shorten would write them, and the stream's file type."""
  if data[:4] != MAGIC:
    raise ShortenError(f'bad magic {data[:4]!r}, expected {MAGIC!r}')
  if len(data) < 5:
    raise ShortenError('stream ends early (no version byte)')
  version = data[4]
  if version not in (1, 2):
    raise ShortenError(f'unsupported Shorten version {version} (1 and 2 are)')
  bits = _BitReader(data[5:])
  file_type, channels, block_size, max_lpc, n_mean, n_skip = (bits.ulong() for _ in range(6))
  if file_type > TYPE_AU2:
    raise ShortenError(f'unsupported file type {file_type}')
  if not 1 <= channels <= 64 or not 1 <= block_size <= MAX_BLOCK_SIZE or max_lpc > 1024 or (
      n_mean > 32768):
    raise ShortenError(f'implausible header: {channels} channels, block size {block_size}, '
                       f'max LPC order {max_lpc}, {n_mean} mean blocks')
  for _ in range(n_skip):
    bits.uvar(XBYTESIZE)

  n_wrap = max(NWRAP, max_lpc)
  lpc_offset = 1 << LPCQUANT if version >= 2 else 0
  means = [[INITIAL_MEAN.get(file_type, 0)] * max(1, n_mean) for _ in range(channels)]
  history = [np.zeros(n_wrap, np.int64) for _ in range(channels)]
  blocks = [[] for _ in range(channels)]
  bitshift, chan = 0, 0
  while (cmd := bits.uvar(FNSIZE)) != FN_QUIT:
    if cmd in (FN_DIFF0, FN_DIFF1, FN_DIFF2, FN_DIFF3, FN_QLPC, FN_ZERO):
      resn = bits.uvar(ENERGYSIZE) if cmd != FN_ZERO else 0
      offset = mean_offset(means[chan], n_mean, version, bitshift)
      hist = history[chan]
      if cmd == FN_ZERO:
        x = np.zeros(block_size, np.int64)
      elif cmd == FN_QLPC:
        order = bits.uvar(LPCQSIZE)
        if order > max_lpc:
          raise ShortenError(f'LPC order {order} exceeds the header maximum {max_lpc}')
        coefs = [bits.var(LPCQUANT) for _ in range(order)]
        residual = bits.residuals(block_size, resn)
        if order:
          hist[n_wrap - order:] -= offset
        x = _predict_lpc(residual, coefs, hist, lpc_offset) + offset
      else:
        x = _predict_fixed(cmd, bits.residuals(block_size, resn), hist, offset)
      if n_mean > 0:
        means[chan] = means[chan][1:] + [block_mean(x, version, bitshift)]
      history[chan] = np.concatenate([hist, x])[-n_wrap:]
      blocks[chan].append(_output(x, bitshift, file_type))
      chan = (chan + 1) % channels
    elif cmd == FN_BLOCKSIZE:
      block_size = bits.ulong()
      if not 1 <= block_size <= MAX_BLOCK_SIZE:
        raise ShortenError(f'block size {block_size} is out of range')
    elif cmd == FN_BITSHIFT:
      bitshift = bits.uvar(BITSHIFTSIZE)
      if bitshift > 32:
        raise ShortenError(f'bit shift {bitshift} is out of range')
    elif cmd == FN_VERBATIM:  # a copy of the original file's header bytes: not samples
      for _ in range(bits.uvar(VERBATIM_CKSIZE_SIZE)):
        bits.uvar(VERBATIM_BYTE_SIZE)
    else:
      raise ShortenError(f'unknown command {cmd} at bit {bits.pos}')
  rounds = len(blocks[-1])  # like shorten, drop a round of blocks that the stream left unfinished
  columns = [np.concatenate(b[:rounds]) if rounds else np.zeros(0, np.int64) for b in blocks]
  return np.stack(columns, axis=1), file_type


def decode_shorten(data: bytes) -> np.ndarray:
  """A Shorten stream (versions 1, 2) -> [S, C] int64, the sample values shorten writes out.

  16-bit types give signed (S16) or unsigned (U16) samples, 8-bit ones signed or unsigned bytes,
  and the u-law types (AU1, AU2, ULAW) give G.711 u-law bytes 0..255.
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
  """('pcm' | 'ulaw', whether Shorten-compressed) from `sample_coding`."""
  coding = str(fields.get('sample_coding', 'pcm')).strip().lower()
  base, _, compression = coding.partition(',')
  base = {'pcm': 'pcm', 'ulaw': 'ulaw', 'mu-law': 'ulaw'}.get(base)
  if base is None or (compression and not compression.startswith('embedded-shorten')):
    raise SphereError(f'{path}: unknown sample_coding {coding!r} (pcm, ulaw or mu-law, '
                      'optionally ,embedded-shorten-vX.XX)')
  return base, bool(compression)


def read_sphere(path) -> tuple[np.ndarray, int]:
  """A SPHERE file -> (samples [S, C] int16, sample rate); u-law is expanded to 16-bit linear."""
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
  if n_bytes != (2 if base == 'pcm' else 1):
    raise SphereError(f'{path}: {n_bytes}-byte {base} samples are not supported')
  body = data[size:]

  if shortened:
    try:
      samples, file_type = _decode_shorten(body)
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

  if shortened:
    samples = samples[:count]
    if base == 'pcm' and samples.size and (samples.min() < -32768 or samples.max() > 32767):
      raise SphereError(f'{path}: corrupt embedded Shorten stream: samples exceed 16 bits')
  elif base == 'pcm':
    order = fields.get('sample_byte_format')
    if order not in ('01', '10'):
      raise SphereError(f'{path}: pcm needs sample_byte_format 01 or 10, not {order!r}')
    dtype = '<i2' if order == '01' else '>i2'
    samples = np.frombuffer(body, dtype, count * channels).reshape(count, channels)
  else:
    samples = np.frombuffer(body, np.uint8, count * channels).reshape(count, channels)
  return (ULAW_TO_LINEAR[samples] if base == 'ulaw' else samples.astype(np.int16)), rate
