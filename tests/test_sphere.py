"""SPHERE reading and Shorten decoding: ffmpeg-decoded fixtures, round trips, tables, errors.

The fixtures and their ffmpeg decodings come from tests/fixtures/make_sphere_fixtures.py and
make_alaw_fixture.py; ffmpeg itself is not needed here.
"""

import hashlib
import pathlib
import re
import textwrap

import numpy as np
import pytest

from convssl_jax.data import sphere
from convssl_jax.data.sphere import (ShortenError, SphereError, decode_shorten, read_sphere,
                                     read_sphere_header)
from tests import processes
from tests.fixtures.sphere_write import encode_shorten, write_sphere

FIXTURES = pathlib.Path(__file__).parent / 'fixtures' / 'sphere'
HEADER_SIZE = 1024


def _speechlike(n: int, channels: int, seed: int) -> np.ndarray:
  """Sines under a moving envelope plus noise, int64 in the 16-bit range."""
  rng = np.random.default_rng(seed)
  t = np.arange(n)[:, None] / 8000
  envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t + np.arange(channels))
  x = envelope * (7000 * np.sin(2 * np.pi * 210 * t) + 2000 * np.sin(2 * np.pi * 1250 * t))
  return np.round(x + rng.normal(0, 150, (n, channels))).astype(np.int64)


def _signal(kind: str, n: int = 1024, channels: int = 2) -> np.ndarray:
  if kind == 'random':
    return np.random.default_rng(1).integers(-32768, 32768, (n, channels))
  return _speechlike(n, channels, seed=2)


def _sphere_file(tmp_path, lines, body=b'', size=HEADER_SIZE, name='x.sph') -> pathlib.Path:
  """A SPHERE file with the given header lines (after the size line), padded to `size`."""
  head = '\n'.join(['NIST_1A', f'{size:7d}', *lines]).encode() + b'\n'
  path = tmp_path / name
  path.write_bytes(head + b' ' * (size - len(head)) + body)
  return path


# Fixtures against ffmpeg.


@pytest.mark.parametrize('name', ['pcm_le', 'pcm_be', 'ulaw', 'alaw', 'pcm_shorten',
                                  'pcm_shorten_diff0', 'pcm_shorten_lpc', 'pcm_shorten_v1'])
def test_fixture_matches_ffmpeg(name):
  samples, rate = read_sphere(FIXTURES / f'{name}.sph')
  assert rate == 8000 and samples.dtype == np.int16 and samples.shape == (1200, 2)
  np.testing.assert_array_equal(samples, np.load(FIXTURES / f'{name}.ffmpeg.npy'))


@pytest.mark.parametrize('name', ['ulaw_shorten', 'ulaw_shorten_au1'])
def test_ulaw_shorten_fixture_matches_ffmpeg_on_the_same_bytes(name):
  """ffmpeg decodes no u-law Shorten; these hold ulaw.sph's u-law bytes, which ffmpeg expands."""
  path = FIXTURES / f'{name}.sph'
  plain_bytes = (FIXTURES / 'ulaw.sph').read_bytes()[HEADER_SIZE:]
  codes = decode_shorten(path.read_bytes()[HEADER_SIZE:])
  np.testing.assert_array_equal(codes, np.frombuffer(plain_bytes, np.uint8).reshape(-1, 2))
  np.testing.assert_array_equal(read_sphere(path)[0], np.load(FIXTURES / 'ulaw.ffmpeg.npy'))


# Tables.


def test_ulaw_table_is_g711():
  for code in range(256):
    inverted = code ^ 0xFF
    segment, step = (inverted >> 4) & 7, inverted & 0xF
    magnitude = 4 * (((2 * step + 33) << segment) - 33)  # G.711 Table 2, scaled to 16 bits
    assert sphere.ULAW_TO_LINEAR[code] == (-magnitude if inverted & 0x80 else magnitude)


def test_alaw_table_is_g711():
  for code in range(256):
    inverted = code ^ 0x55  # A-law inverts the even bits
    segment, step = (inverted >> 4) & 7, inverted & 0xF
    # G.711 Table 1: decoder outputs in 12-bit units, scaled to 16 bits (x 8).
    magnitude = 8 * (2 * step + 1 if segment == 0 else (2 * step + 33) << (segment - 1))
    assert sphere.ALAW_TO_LINEAR[code] == (magnitude if inverted & 0x80 else -magnitude)


def test_alaw_table_is_pythons_audioop():
  audioop = pytest.importorskip('audioop', reason='audioop left Python in 3.13')
  expected = np.frombuffer(audioop.alaw2lin(bytes(range(256)), 2), np.int16)
  np.testing.assert_array_equal(sphere.ALAW_TO_LINEAR, expected)


def test_alaw_fixture_holds_every_code():
  samples, _ = read_sphere(FIXTURES / 'alaw.sph')
  np.testing.assert_array_equal(samples[:256, 0], sphere.ALAW_TO_LINEAR)
  np.testing.assert_array_equal(samples[:256, 1], sphere.ALAW_TO_LINEAR[::-1])


def test_linear_to_ulaw_inverts_the_table_and_is_monotonic():
  codes = np.arange(256)
  round_trip = sphere.linear_to_ulaw(sphere.ULAW_TO_LINEAR)
  np.testing.assert_array_equal(round_trip[codes != 0x7F], codes[codes != 0x7F])
  assert round_trip[0x7F] == 0xFF  # both zeros expand to 0, which codes as positive zero
  levels = sphere.ULAW_TO_LINEAR[sphere.linear_to_ulaw(np.arange(-32768, 32768))]
  assert np.all(np.diff(levels) >= 0)


def test_shorten_ulaw_tables():
  digest = hashlib.sha256(sphere.ULAW_OUTWARD.astype(np.uint8).tobytes()).hexdigest()
  # The ulaw_outward table of shorten 2.x's generated bitshift.h, checked row by row when written.
  assert digest == '0413ef215c96ab0ff04cce21b32171f481b027f4e2515f3c28743170654d4ff8'
  for shift in range(sphere.ULAW_SHIFTS):
    np.testing.assert_array_equal(sphere.ULAW_OUTWARD[shift][sphere.ULAW_INWARD[shift] + 128],
                                  np.arange(256))


# Header parsing.


def test_read_sphere_header():
  assert read_sphere_header(FIXTURES / 'pcm_shorten.sph') == {
      'sample_count': 1200, 'channel_count': 2, 'sample_rate': 8000, 'sample_n_bytes': 2,
      'sample_coding': 'pcm,embedded-shorten-v2.00', 'sample_byte_format': '01',
      'sample_sig_bits': 16}


def test_header_types_comments_and_large_header(tmp_path):
  x = np.array([[1, -2], [300, -32768], [32767, 0]], np.int16)
  path = _sphere_file(tmp_path, [
      'database_id -s13 SWITCHBOARD1', '; a comment line', 'prompt -s11 two  spaces',
      'sample_checksum -r 0.5', 'channel_count -i 2', 'sample_count -i 3',
      'sample_rate -i 8000', 'sample_n_bytes -i 2', 'sample_byte_format -s2 10',
      'sample_coding -s3 pcm', 'end_head'], x.astype('>i2').tobytes(), size=2048)
  header = read_sphere_header(path)
  assert header['database_id'] == 'SWITCHBOARD1' and header['prompt'] == 'two  spaces'
  assert header['sample_checksum'] == 0.5 and header['channel_count'] == 2
  samples, rate = read_sphere(path)
  np.testing.assert_array_equal(samples, x)
  assert rate == 8000


# Round trips through our encoder.


@pytest.mark.parametrize('kind', ['random', 'speechlike'])
@pytest.mark.parametrize('block_size', [256, 100, 7])  # 1024 samples: divides, does not, tiny
@pytest.mark.parametrize('order', [0, 1, 2, 3])
def test_shorten_round_trip_fixed_predictors(order, block_size, kind):
  x = _signal(kind)
  for file_type in sphere.PCM16_TYPES:
    data = encode_shorten(x, file_type, block_size=block_size, predictors=(order,))
    np.testing.assert_array_equal(decode_shorten(data), x)


@pytest.mark.parametrize('version', [1, 2])
@pytest.mark.parametrize('block_size', [256, 5])  # 5: a block shorter than the LPC history
@pytest.mark.parametrize('lpc_order', [1, 4, 8])
def test_shorten_round_trip_lpc(lpc_order, block_size, version):
  x = _signal('speechlike') + 3000  # an offset for the running mean to remove
  data = encode_shorten(x, sphere.TYPE_S16LH, block_size=block_size, predictors=(),
                        lpc_order=lpc_order, version=version, nmean=4)
  np.testing.assert_array_equal(decode_shorten(data), x)


@pytest.mark.parametrize('version,nmean', [(2, 4), (2, 0), (1, 0), (1, 3)])
def test_shorten_round_trip_bitshift_zero_blocks_and_means(version, nmean):
  x = _signal('speechlike', n=2000) - 2500
  x[256:768, 1] = 0  # FN_ZERO blocks
  x[768:1280, 0] = x[768:1280, 0] // 8 * 8  # FN_BITSHIFT 3, then back to 0
  data = encode_shorten(x, sphere.TYPE_S16HL, version=version, nmean=nmean,
                        verbatim=b'RIFF header kept verbatim')
  np.testing.assert_array_equal(decode_shorten(data), x)


@pytest.mark.parametrize('file_type', [sphere.TYPE_AU1, sphere.TYPE_AU2])
@pytest.mark.parametrize('block_size', [256, 100])
@pytest.mark.parametrize('order', [0, 1, 2, 3])
def test_shorten_round_trip_ulaw_bytes(order, block_size, file_type):
  rng = np.random.default_rng(3)
  random_codes = rng.integers(0, 256, (1024, 2))  # both u-law zeros, 0x7F and 0xFF, included
  speech_codes = sphere.linear_to_ulaw(_signal('speechlike')).astype(np.int64)
  for codes in (random_codes, speech_codes):
    data = encode_shorten(codes, file_type, block_size=block_size, predictors=(order,))
    np.testing.assert_array_equal(decode_shorten(data), codes)


def test_shorten_round_trip_linear_ulaw_type():
  """TYPE_ULAW codes linear values, so only the two u-law zeros merge."""
  codes = np.random.default_rng(4).integers(0, 256, (1000, 2))
  decoded = decode_shorten(encode_shorten(codes, sphere.TYPE_ULAW))
  np.testing.assert_array_equal(sphere.ULAW_TO_LINEAR[decoded], sphere.ULAW_TO_LINEAR[codes])


@pytest.mark.parametrize('file_type,low,high', [(sphere.TYPE_U8, 0, 256),
                                                 (sphere.TYPE_S8, -128, 128),
                                                 (sphere.TYPE_U16LH, 0, 65536)])
def test_shorten_round_trip_other_types(file_type, low, high):
  x = np.random.default_rng(5).integers(low, high, (700, 3))
  np.testing.assert_array_equal(decode_shorten(encode_shorten(x, file_type)), x)


@pytest.mark.parametrize('byte_order', ['01', '10'])
@pytest.mark.parametrize('coding', ['pcm', 'ulaw', 'pcm,embedded-shorten-v2.00',
                                    'ulaw,embedded-shorten-v2.00'])
def test_write_then_read_sphere(tmp_path, coding, byte_order):
  x = _signal('speechlike', n=999).astype(np.int16)
  path = tmp_path / 'x.sph'
  write_sphere(path, x, 16000, coding, byte_order=byte_order)
  samples, rate = read_sphere(path)
  expected = sphere.ULAW_TO_LINEAR[sphere.linear_to_ulaw(x)] if coding.startswith('ulaw') else x
  np.testing.assert_array_equal(samples, expected)
  assert rate == 16000 and samples.dtype == np.int16


# Errors.


def _raises_naming(path, message):
  return pytest.raises(SphereError, match=f'^{re.escape(str(path))}: .*{message}')


def test_not_a_sphere_file(tmp_path):
  path = tmp_path / 'x.wav'
  path.write_bytes(b'RIFF' + bytes(100))
  with _raises_naming(path, 'not a NIST SPHERE file'):
    read_sphere(path)
  with _raises_naming(path, 'not a NIST SPHERE file'):
    read_sphere_header(path)


def test_truncated_header(tmp_path):
  cut = tmp_path / 'cut.sph'
  cut.write_bytes((FIXTURES / 'pcm_le.sph').read_bytes()[:500])
  with _raises_naming(cut, 'truncated SPHERE header'):
    read_sphere(cut)
  no_end = _sphere_file(tmp_path, ['sample_rate -i 8000'], name='no_end.sph')
  with _raises_naming(no_end, 'truncated SPHERE header'):
    read_sphere(no_end)


def test_malformed_header_line(tmp_path):
  path = _sphere_file(tmp_path, ['sample_rate 8000', 'end_head'])
  with _raises_naming(path, 'malformed SPHERE header line'):
    read_sphere(path)


@pytest.mark.parametrize('coding,message', [
    ('g722', 'unknown sample_coding'), ('pcm,shortpack-v0', 'unknown sample_coding'),
    ('ulaw,embedded-wavpack', 'unknown sample_coding'),
    ('alaw,embedded-shorten-v2.00', 'Shorten-compressed A-law is not supported'),
])
def test_unknown_sample_coding(tmp_path, coding, message):
  path = _sphere_file(tmp_path, ['sample_rate -i 8000', f'sample_coding -s{len(coding)} {coding}',
                                 'end_head'], bytes(16))
  with _raises_naming(path, message):
    read_sphere(path)


@pytest.mark.parametrize('name', ['pcm_le', 'ulaw', 'alaw'])
def test_truncated_samples(tmp_path, name):
  path = tmp_path / f'{name}.sph'
  path.write_bytes((FIXTURES / f'{name}.sph').read_bytes()[:-10])
  with _raises_naming(path, 'truncated sample data'):
    read_sphere(path)


def test_shorten_with_fewer_samples_than_the_header(tmp_path):
  path = tmp_path / 'short.sph'
  data = (FIXTURES / 'pcm_shorten.sph').read_bytes()
  path.write_bytes(data.replace(b'sample_count -i 1200', b'sample_count -i 1300'))
  with _raises_naming(path, r'truncated sample data \(1200 of 1300'):
    read_sphere(path)


def test_corrupt_shorten(tmp_path):
  data = (FIXTURES / 'pcm_shorten.sph').read_bytes()
  bad_magic = tmp_path / 'bad_magic.sph'
  bad_magic.write_bytes(data[:HEADER_SIZE] + b'xxxx' + data[HEADER_SIZE + 4:])
  with _raises_naming(bad_magic, 'corrupt embedded Shorten stream: bad magic'):
    read_sphere(bad_magic)
  cut = tmp_path / 'cut.sph'
  cut.write_bytes(data[:(HEADER_SIZE + len(data)) // 2])
  with _raises_naming(cut, 'corrupt embedded Shorten stream: stream ends early'):
    read_sphere(cut)


def test_shorten_stream_that_does_not_match_the_header(tmp_path):
  ulaw_stream = (FIXTURES / 'ulaw_shorten.sph').read_bytes()[HEADER_SIZE:]
  path = _sphere_file(tmp_path, ['sample_rate -i 8000', 'channel_count -i 2',
                                 'sample_coding -s26 pcm,embedded-shorten-v2.00', 'end_head'],
                      ulaw_stream)
  with _raises_naming(path, 'does not match the header'):
    read_sphere(path)


@pytest.mark.parametrize('data,message', [
    (b'', 'bad magic'),
    (b'ajkg', 'no version byte'),
    (b'ajkg\x03' + bytes(8), 'unsupported Shorten version 3'),
    (b'ajkg\x02', 'stream ends early'),
    (b'ajkg\x02\xff', 'stream ends early'),
])
def test_decode_shorten_errors(data, message):
  with pytest.raises(ShortenError, match=message):
    decode_shorten(data)


def test_decode_shorten_without_quit():
  data = encode_shorten(_signal('speechlike', n=300), sphere.TYPE_S16LH)
  with pytest.raises(ShortenError, match='stream ends early'):
    decode_shorten(data[:-4])


# Hand-made streams: each code a (value, n) pair, written as uvar(n) (shorten's bit format).


def _stream(codes, version: int = 2) -> bytes:
  """sphere.MAGIC, the version and the `uvar` codes [(value, n), ...], packed MSB first."""
  bits = ''.join('0' * (v >> n) + '1' + (format(v & ((1 << n) - 1), f'0{n}b') if n else '')
                 for v, n in codes)
  bits += '0' * (-len(bits) % 8)
  return sphere.MAGIC + bytes([version]) + int(bits or '0', 2).to_bytes(len(bits) // 8, 'big')


def _ulong(value: int):
  n = value.bit_length()
  return [(n, 2), (value, n)]


def _head(file_type=sphere.TYPE_S16LH, channels=2, block_size=4, max_lpc=0, n_mean=0, skip=()):
  codes = sum((_ulong(v) for v in (file_type, channels, block_size, max_lpc, n_mean, len(skip))),
              [])
  return codes + [(b, sphere.XBYTESIZE) for b in skip]


def _cmd(fn, *codes):
  return [(fn, sphere.FNSIZE), *codes]


def _diff0(*residuals, resn=3):
  """FN_DIFF0 with `residuals` (var(resn) codes: sign in the lowest bit)."""
  return _cmd(sphere.FN_DIFF0, (resn, sphere.ENERGYSIZE),
              *[((r << 1) if r >= 0 else ((~r << 1) | 1), resn + 1) for r in residuals])


def test_hand_made_stream_by_hand():
  """Skip bytes, a verbatim chunk, DIFF0 / ZERO blocks of 2 channels, a last shorter round; the
  expected samples worked out from the format, not from the encoder."""
  data = _stream(_head(block_size=3, skip=(200, 5))
                 + _cmd(sphere.FN_VERBATIM, (2, sphere.VERBATIM_CKSIZE_SIZE),
                        (255, sphere.VERBATIM_BYTE_SIZE), (0, sphere.VERBATIM_BYTE_SIZE))
                 + _diff0(1, -2, 3) + _cmd(sphere.FN_ZERO)
                 + _cmd(sphere.FN_BITSHIFT, (2, sphere.BITSHIFTSIZE))
                 + _cmd(sphere.FN_BLOCKSIZE, *_ulong(2)) + _diff0(-1, 0) + _diff0(5, 6)
                 + _cmd(sphere.FN_QUIT))
  np.testing.assert_array_equal(decode_shorten(data),
                                [[1, 0], [-2, 0], [3, 0], [-4, 20], [0, 24]])


@pytest.mark.parametrize('codes,message', [
    (_head() + [(10, sphere.FNSIZE)], 'unknown command 10'),
    (_head() + _cmd(sphere.FN_BLOCKSIZE, *_ulong(70000)), 'block size 70000 is out of range'),
    (_head() + _cmd(sphere.FN_BITSHIFT, (33, sphere.BITSHIFTSIZE)), 'bit shift 33'),
    (_head(max_lpc=2) + _cmd(sphere.FN_QLPC, (3, sphere.ENERGYSIZE), (3, sphere.LPCQSIZE)),
     'LPC order 3 exceeds the header maximum 2'),
    (_head() + _cmd(sphere.FN_DIFF0, (40, sphere.ENERGYSIZE)), 'residual width 41 bits'),
    (_head() + _diff0(30000, 40000, 0, 0, resn=16), 'sample 40000 .* out of range for file type 5'),
    (_head(file_type=sphere.TYPE_S8) + _diff0(-129, 0, 0, 0, resn=8), 'sample -129'),
    (_head(block_size=2) + _diff0(1, 1) + _cmd(sphere.FN_BLOCKSIZE, *_ulong(3)) + _diff0(1, 1, 1)
     + _cmd(sphere.FN_QUIT), 'channel 0 ends at another sample'),
    (_head(file_type=sphere.TYPE_AU2) + _cmd(sphere.FN_BITSHIFT, (13, sphere.BITSHIFTSIZE))
     + _cmd(sphere.FN_ZERO), 'u-law bit shift 13'),
    (_head(file_type=9), 'unsupported file type 9'),
    (_head(channels=0), 'implausible header: 0 channels'),
])
def test_decode_shorten_refuses_bad_streams(codes, message):
  with pytest.raises(ShortenError, match=message):
    decode_shorten(_stream(codes))


def _zero_blocks(n_blocks: int) -> bytes:
  """Stereo FN_ZERO blocks of the largest size: ~210,000 samples per byte of stream."""
  return _stream(_head(block_size=sphere.MAX_BLOCK_SIZE)
                 + _cmd(sphere.FN_ZERO) * (2 * n_blocks) + _cmd(sphere.FN_QUIT))


def test_decoding_is_bounded_by_the_stream_and_the_header(tmp_path):
  """A 12.5 kB stream of zero blocks would decode to 2 x 6.6e8 samples (10 GB as the old
  decoder's int64): refused past MAX_SAMPLES_PER_BYTE (~100 MB of int32 decoded by then), or
  stopped at the header's sample_count, in a process allowed 300 MB more than it holds after
  importing."""
  stream = _zero_blocks(10_000)
  assert len(stream) < 13_000
  path = _sphere_file(tmp_path, ['sample_count -i 100000', 'channel_count -i 2',
                                 'sample_rate -i 8000', 'sample_n_bytes -i 2',
                                 'sample_byte_format -s2 01',
                                 'sample_coding -s26 pcm,embedded-shorten-v2.00', 'end_head'],
                      stream)
  script = textwrap.dedent(f"""
      import re, resource
      from convssl_jax.data import sphere
      sphere.read_sphere({str(FIXTURES / 'pcm_shorten.sph')!r})  # load the compiled decoder
      held = int(re.search(r'VmSize:\\s+(\\d+)', open('/proc/self/status').read())[1]) * 1024
      resource.setrlimit(resource.RLIMIT_AS, (held + 300 * 2**20, resource.RLIM_INFINITY))
      samples, rate = sphere.read_sphere({str(path)!r})
      print(samples.shape, samples.any())
      try:
        sphere.decode_shorten(open({str(path)!r}, 'rb').read()[1024:])
      except sphere.ShortenError as error:
        print(error)
  """)
  run = processes.run('-c', script, timeout=300)
  assert run.returncode == 0, run.stderr[-2000:]
  limit = sphere.MAX_SAMPLES_PER_BYTE * len(stream)
  assert run.stdout.splitlines() == [
      '(100000, 2) False',
      f'decodes to more than {limit} samples per channel ({sphere.MAX_SAMPLES_PER_BYTE} per byte '
      'of stream): not a plausible recording']


def test_bad_sample_count(tmp_path):
  path = _sphere_file(tmp_path, ['sample_count -i -5', 'sample_rate -i 8000', 'end_head'])
  with _raises_naming(path, "bad sample_count -5"):
    read_sphere(path)
