"""Praat TextGrids as voice activity: the text (long or short text format, UTF-8, UTF-16 or
Latin-1, as Praat writes them), its interval tiers, and which of them are speakers A and B.
`va_files.read_textgrid` reads one from a file.

A speaker's speech is the intervals of its tier with non-blank text (touching ones joined). The
speaker tiers are the ones named by `tiers`, else recognised from the file's layout (`choose`):
two interval tiers in file order, or Montreal Forced Aligner's `words` tiers (phones ignored).
A file that fits neither is refused in one line that lists its tiers and the way to name them.
`format_textgrid` writes interval tiers as a TextGrid (predict's `<name>.TextGrid`).
"""

import array
import codecs
import re
import shlex
from collections.abc import Sequence

from absl import logging

from convssl_jax import errors
from convssl_jax.data import va as va_lib

# How a user names the speaker tiers: the flag of predict/stream and the builders, and the config
# field of a corpus.
TIERS_HINT = '--va_tiers=A_TIER,B_TIER (a corpus: data.va_tiers)'
# Intervals of a tier may overlap by this much (float text written by other tools) and still
# count as consecutive.
_TOLERANCE_S = 1e-6
# Montreal Forced Aligner's tier names: `words` / `phones` for one speaker, `<speaker> - words` /
# `<speaker> - phones` for several.
_MFA_TIER = re.compile(r'(?:(?P<speaker>.+?)\s+-\s+)?(?P<kind>words|phones)')
# A string (doubled quotes inside), an item index `[n]` (skipped), a number, or a tiers flag;
# everything else (the long format's `xmin =` labels) lies between tokens.
_TOKEN = re.compile(r'"((?:[^"]|"")*)"|\[\s*\d*\s*\]'
                    r'|(?<![\w.])(-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)(?![\w.])|(<exists>|<absent>)')
_COUNT = re.compile(r'\d+')


def decode(data: bytes, *, source: str) -> str:
  """A TextGrid file's bytes -> text: UTF-16 or UTF-8 after a byte-order mark (Praat writes
  UTF-16 whenever a label is not ASCII), else UTF-8, else Latin-1 (Praat's older default).
  Praat's binary files are refused."""
  if data.startswith(b'ooBinaryFile'):
    raise errors.InputError(f'{source}: a binary Praat file; save the TextGrid as a text file')
  for bom, encoding in ((codecs.BOM_UTF8, 'utf-8-sig'), (codecs.BOM_UTF16_LE, 'utf-16'),
                        (codecs.BOM_UTF16_BE, 'utf-16')):
    if data.startswith(bom):
      try:
        return data.decode(encoding)
      except UnicodeDecodeError as err:
        raise errors.InputError(f'{source}: not valid {encoding.upper()} after its byte-order '
                                f'mark ({err.reason} at byte {err.start})') from err
  try:
    return data.decode('utf-8')
  except UnicodeDecodeError:
    return data.decode('latin-1')


class _Tokens:
  """The TextGrid's tokens in file order, read lazily (memory stays that of the text)."""

  def __init__(self, text: str, source: str):
    self.source = source
    self._matches = (m for m in _TOKEN.finditer(text) if m[0][0] != '[')

  def take(self, kind: str) -> str | float | int:
    """The next token, which must be a `kind` (string, number, count or flag)."""
    m = next(self._matches, None)
    if m is None:
      raise errors.InputError(f'{self.source}: TextGrid ends early (expected a {kind})')
    if (m[1] is not None) != (kind == 'string') or (m[3] is not None) != (kind == 'flag'):
      value = m[1] if m[1] is not None else m[0]
      raise errors.InputError(f'{self.source}: TextGrid has {value!r} where a {kind} belongs')
    if kind == 'string':
      return m[1].replace('""', '"')
    if kind == 'count':
      if not _COUNT.fullmatch(m[2]):
        raise errors.InputError(f'{self.source}: TextGrid size {m[2]} is not a whole number >= 0')
      return int(m[2])
    return float(m[2]) if kind == 'number' else m[3]


def interval_tiers(text: str, *, source: str) -> list[tuple[str, array.array]]:
  """A TextGrid's text -> (name, speech segments) of each interval tier, in file order, the
  segments' bounds flat in a float array (start, end, start, ...: 16 bytes a segment, whatever
  the tier's size); point tiers are read past. Intervals must be ordered (each starts where the previous one ends, or
  later) and not reversed; errors name `source` and what is wrong."""
  tokens = _Tokens(text, source)
  try:
    header = tokens.take('string'), tokens.take('string')
  except errors.InputError:
    header = None
  if header not in (('ooTextFile', 'TextGrid'), ('ooTextFile short', 'TextGrid')):
    raise errors.InputError(f'{source}: not a Praat TextGrid text file (File type = '
                            '"ooTextFile", Object class = "TextGrid")')
  tokens.take('number'), tokens.take('number')  # the grid's xmin, xmax
  if tokens.take('flag') != '<exists>':
    raise errors.InputError(f'{source}: the TextGrid has no tiers')
  tiers = []
  for _ in range(tokens.take('count')):
    kind, name = tokens.take('string'), tokens.take('string')
    tokens.take('number'), tokens.take('number')
    count = tokens.take('count')
    if kind == 'IntervalTier':
      tiers.append((name, _speech(tokens, count, f'{source}: tier {name!r}')))
    elif kind == 'TextTier':
      for _ in range(count):
        tokens.take('number'), tokens.take('string')
    else:
      raise errors.InputError(f'{source}: tier {name!r} has class {kind!r}, expected '
                              '"IntervalTier" or "TextTier"')
  return tiers


def _speech(tokens: _Tokens, count: int, where: str) -> array.array:
  """`count` intervals of a tier -> its speech segments' bounds: non-blank intervals, touching
  ones joined."""
  bounds = array.array('d')
  previous_end = float('-inf')
  for i in range(1, count + 1):
    start, end, label = tokens.take('number'), tokens.take('number'), tokens.take('string')
    if end < start:
      raise errors.InputError(f'{where}: interval {i} [{start}, {end}] ends before it starts')
    if start < previous_end - _TOLERANCE_S:
      raise errors.InputError(f'{where}: interval {i} [{start}, {end}] starts before the '
                              f'previous one ends ({previous_end})')
    previous_end = end
    if label.strip():
      if bounds and start <= bounds[-1] + _TOLERANCE_S:
        bounds[-1] = max(bounds[-1], end)
      else:
        bounds.extend((start, end))
  return bounds


def _listing(names: Sequence[str]) -> str:
  return ', '.join(repr(n) for n in names) or 'none'


def _fix(names: Sequence[str]) -> str:
  """The one-line fix: name the speaker tiers, with an example from the file's own tiers."""
  example = ','.join((list(names) + [''])[:2])
  return (f'name the speaker tiers with {TIERS_HINT}, e.g. {shlex.quote("--va_tiers=" + example)}'
          " (an empty name is a silent speaker)")


def choose(names: Sequence[str], tiers: Sequence[str] | None, *,
           source: str) -> tuple[int | None, int | None]:
  """Which interval tiers (indices into `names`) are speakers A and B; None = a silent speaker.

  `tiers`: the names of A's and B's tiers ('' or absent B: silent). Without it: MFA's layout
  (every tier `words`/`phones` or `<speaker> - words`/`- phones`): its words tiers in file order,
  one of them speaker A with B silent (logged); otherwise exactly two interval tiers, in file
  order. Anything else is refused (InputError) naming the tiers and the fix.
  """
  if tiers is not None:
    return tuple(_named(names, name, source) for name in check_tiers(tiers))
  mfa = [_MFA_TIER.fullmatch(n) for n in names]
  if names and all(mfa):
    words = [i for i, m in enumerate(mfa) if m['kind'] == 'words']
    if len(words) == 1:
      logging.warning('%s: one speaker (Montreal Forced Aligner tiers %s): speaker A = tier %r, '
                      'speaker B silent', source, _listing(names), names[words[0]])
      return words[0], None
    if len(words) == 2:
      return words[0], words[1]
    candidates = [names[i] for i in words]
    what = f'{len(words)} speakers (MFA words tiers {_listing(candidates)})'
  elif len(names) == 2:
    return 0, 1
  else:
    candidates = names
    what = f'{len(names)} interval tier{"s" * (len(names) != 1)} ({_listing(names)})'
  raise errors.InputError(f'{source}: cannot tell speakers A and B among {what}; '
                          f'{_fix(candidates)}')


def _named(names: Sequence[str], name: str, source: str) -> int | None:
  if not name:
    return None
  found = [i for i, n in enumerate(names) if n == name]
  if len(found) != 1:
    what = 'no interval tier' if not found else f'{len(found)} interval tiers'
    raise errors.InputError(f'{source}: {what} named {name!r} (its interval tiers: '
                            f'{_listing(names)}); {_fix(names)}')
  return found[0]


def check_tiers(tiers: Sequence[str]) -> tuple[str, str]:
  """`tiers` as (A's tier, B's tier), '' for a silent speaker; ConfigError unless it names one or
  two tiers, at least one of them non-empty."""
  tiers = (tiers,) if isinstance(tiers, str) else tuple(tiers)
  if len(tiers) not in (1, 2) or not any(tiers) or not all(isinstance(t, str) for t in tiers):
    raise errors.ConfigError(f'va_tiers={tiers!r}: expected the tier names of speakers A and B, '
                             f'{TIERS_HINT}, one of them possibly empty (silent)')
  return (tiers + ('',))[:2]


def parse_tiers(value: str | Sequence[str] | None) -> tuple[str, str] | None:
  """A `--va_tiers` flag or `data.va_tiers` value ('A,B', 'A' or 'A,'; ',B' for a silent A), or
  the names themselves -> `tiers` for `choose`; '' or None -> None (recognised per file)."""
  if not value:
    return None
  return check_tiers(value.split(',') if isinstance(value, str) else value)


def textgrid_va_list(text: str, *, source: str,
                     tiers: Sequence[str] | None = None) -> list[list[list[float]]]:
  """A TextGrid's text -> a VA list: the speech of the tiers `choose` picks for A and B."""
  found = interval_tiers(text, source=source)
  names = [name for name, _ in found]
  va_list = [[] if i is None else [list(pair) for pair in zip(found[i][1][::2], found[i][1][1::2])]
             for i in choose(names, tiers, source=source)]
  va_lib.validate_va_list(va_list, source=source)
  return va_list


def _number(x: float) -> str:
  """A time as Praat writes it: the shortest text that reads back as the same float."""
  return repr(float(x)).removesuffix('.0')


def _quoted(text: str) -> str:
  return '"' + text.replace('"', '""') + '"'


def format_textgrid(tiers: Sequence[tuple[str, Sequence[tuple[float, float, str]]]], *,
                    xmax: float, xmin: float = 0.0) -> str:
  """Interval tiers (name, [(start, end, text), ...] in time order, not overlapping, within
  [xmin, xmax]) -> a TextGrid in Praat's long text format, which Praat and ELAN open. A Praat tier
  covers its whole time range: the gaps between intervals become intervals with empty text."""
  lines = ['File type = "ooTextFile"', 'Object class = "TextGrid"', '', f'xmin = {_number(xmin)} ',
           f'xmax = {_number(xmax)} ', 'tiers? <exists> ', f'size = {len(tiers)} ', 'item []: ']
  for t, (name, intervals) in enumerate(tiers, 1):
    filled, at = [], xmin
    for start, end, text in intervals:
      if start < at or end < start or end > xmax:
        raise ValueError(f'tier {name!r}: interval [{start}, {end}] is not in order within '
                         f'[{xmin}, {xmax}]')
      if start > at:
        filled.append((at, start, ''))
      filled.append((start, end, text))
      at = end
    if at < xmax or not filled:
      filled.append((at, xmax, ''))
    lines += [f'    item [{t}]:', '        class = "IntervalTier" ',
              f'        name = {_quoted(name)} ', f'        xmin = {_number(xmin)} ',
              f'        xmax = {_number(xmax)} ', f'        intervals: size = {len(filled)} ']
    for i, (start, end, text) in enumerate(filled, 1):
      lines += [f'        intervals [{i}]:', f'            xmin = {_number(start)} ',
                f'            xmax = {_number(end)} ', f'            text = {_quoted(text)} ']
  return '\n'.join(lines) + '\n'
