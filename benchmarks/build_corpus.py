"""End-to-end corpus builds: conversation-seconds per second, per core, for a Switchboard-like tree.

  python benchmarks/build_corpus.py [--conversations=8] [--minutes=5] [--workers=1,2]
      [--runners=pool] [--tree_dir=/tmp/convssl_bench_swb]

Makes (once, kept in --tree_dir) a Switchboard-1 tree as LDC ships it: `conversations` calls of
`minutes` each, 8 kHz stereo u-law Shorten `.sph` (the synthetic corpus's dialogs as audio) with
ms98-style word files (one utterance per VA segment, a word per ~0.3 s), all sessions in the
train range. Then builds the `switchboard` dataset from it as a user does, `python -m
data_builders switchboard` (decode, VA, F0, resampling, writing array_record; the processes'
start-up included), with a process pool of each of `workers` processes (`--runners=pool`) and,
with `--runners=pool,beam`, through Apache Beam's DirectRunner in multi-processing mode, each
into an empty data directory. Figures: conversation-seconds per wall-second, and per CPU-second
of the build's processes (per core), the largest resident set among them; the CPU seconds of
each stage of one conversation, in this process, and numba's compilation. Prints one JSON line
per case and appends rows to benchmarks/RESULTS.md.
"""

import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl import app, flags

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import results  # noqa: E402

from convssl_jax.data import audio as audio_lib  # noqa: E402
from convssl_jax.data import f0 as f0_lib  # noqa: E402
from data_builders import conversation  # noqa: E402
from data_builders.switchboard import switchboard_dataset_builder as swb  # noqa: E402
from data_builders.synthetic_dialogs import generator  # noqa: E402
from tests import corpus_fixtures as fx  # noqa: E402

flags.DEFINE_integer('conversations', 8, 'Conversations in the tree.')
flags.DEFINE_float('minutes', 5.0, 'Length of each conversation (Switchboard: ~5 min).')
flags.DEFINE_list('workers', ['1', '2'], 'Process-pool sizes to build with.')
flags.DEFINE_list('runners', ['pool'], 'pool and/or beam (DirectRunner, multi_processing); '
                  'none (--runners=) for the stages only.')
flags.DEFINE_string('tree_dir', '/tmp/convssl_bench_swb', 'Where the tree is made (and kept).')
FLAGS = flags.FLAGS

RATE = conversation.TELEPHONE_RATE
WORD_S = 0.3
HOURS = {'switchboard (260 h)': 260, 'fisher part 1 (975 h)': 975,
         'fisher parts 1+2 (1,960 h)': 1960}


def _word_lines(session: str, speaker: str, segments) -> list[str]:
  """ms98 word lines: utterance k is VA segment k, cut into words of ~WORD_S."""
  lines = []
  for utt, (start, end) in enumerate(segments, 1):
    edges = np.linspace(start, end, max(1, round((end - start) / WORD_S)) + 1)
    lines += [f'sw{session}{speaker}-ms98-a-{utt:04d} {s:.6f} {e:.6f} word{i}'
              for i, (s, e) in enumerate(zip(edges[:-1], edges[1:]))]
  return lines


def make_tree(root: pathlib.Path) -> list[str]:
  """The Switchboard-like tree (kept when it is already there); its sessions."""
  sessions = [str(2001 + i) for i in range(FLAGS.conversations)]
  stamp = root / f'.made_{FLAGS.conversations}x{FLAGS.minutes:g}min'
  if stamp.exists():
    return sessions
  for i, session in enumerate(sessions):
    dialog = generator.generate_dialog(i, generator.DialogConfig(duration_s=60 * FLAGS.minutes,
                                                                 sample_rate=RATE))
    fx.write_telephone_audio(root / 'swb1_d1' / 'data' / f'sw0{session}.sph',
                             audio_lib.to_int16(dialog.audio), 'ulaw,embedded-shorten-v2.00')
    folder = fx.swb_transcript_dir(root, session)
    folder.mkdir(parents=True, exist_ok=True)
    for speaker, segments in zip(swb.SPEAKERS, dialog.va_list):
      (folder / f'sw{session}{speaker}-ms98-a-word.text').write_text(
          '\n'.join(_word_lines(session, speaker, segments)) + '\n')
  stamp.touch()
  return sessions


def _children_cpu_s() -> float:
  """CPU seconds of this process's finished children (and theirs, once waited for)."""
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


def compile_cpu_s() -> float:
  """CPU seconds of a fresh process that loads one conversation's kernels with an empty numba
  cache (what each process pays where the compiled cache is not there or not writable), less
  the same with the cache it left."""
  script = ('import numpy as np; from convssl_jax.data import f0, sphere; '
            'f0.fast_pyin_f0(np.zeros((8000, 2), np.float32), 8000); '
            "sphere.read_sphere('tests/fixtures/sphere/ulaw_shorten.sph')")
  with tempfile.TemporaryDirectory(prefix='convssl_bench_numba_') as cache:
    costs = []
    for _ in range(2):  # compiling, then loading the cache
      start = _children_cpu_s()
      subprocess.run([sys.executable, '-c', script], cwd=REPO, check=True,
                     env={**os.environ, 'NUMBA_CACHE_DIR': cache})
      costs.append(_children_cpu_s() - start)
  return round(costs[0] - costs[1], 2)


def stages(root: pathlib.Path, session: str) -> dict[str, float]:
  """CPU seconds of each stage of loading one conversation, as `load_session` runs them."""
  audio_path = root / 'swb1_d1' / 'data' / f'sw0{session}.sph'
  word_dir = fx.swb_transcript_dir(root, session)
  swb.load_session(session, audio_path, word_dir)  # warm-up
  times = {}

  def timed(name, fn):
    start = time.process_time()
    value = fn()
    times[name] = round(time.process_time() - start, 4)
    return value

  audio = timed('decode_s', lambda: conversation.read_telephone_audio(audio_path))
  timed('words_va_s', lambda: [swb.read_utterances(word_dir / f'sw{session}{s}-ms98-a-word.text')
                               for s in swb.SPEAKERS])
  timed('f0_s', lambda: f0_lib.track_f0(audio, RATE))
  timed('resample_s', lambda: audio_lib.to_int16(audio_lib.resample(audio, RATE,
                                                                     conversation.SAMPLE_RATE)))
  example = timed('load_session_s', lambda: swb.load_session(session, audio_path, word_dir))
  timed('encode_s', lambda: conversation.features().encode_example(example))
  return times


# Runs the command in its argv and prints the largest resident set (kB) of it and its processes.
_MEASURED = ('import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; '
             'print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); '
             'sys.exit(code)')


def build(root: pathlib.Path, runner: str, workers: int) -> dict:
  """`python -m data_builders switchboard` on the tree, as a user runs it, into an empty data
  directory: its wall time, the CPU time of it and its worker processes, the largest resident
  set among them and the dataset's size."""
  with tempfile.TemporaryDirectory(prefix='convssl_bench_build_') as data_dir:
    flags_ = ([f'--num_workers={workers}'] if runner == 'pool' else [
        '--beam_runner=DirectRunner',
        f'--beam_options=--direct_running_mode=multi_processing --direct_num_workers={workers}'])
    cpu, wall = _children_cpu_s(), time.perf_counter()
    run = subprocess.run([sys.executable, '-c', _MEASURED, sys.executable, '-m', 'data_builders',
                          'switchboard', f'--manual_dir={root}', f'--data_dir={data_dir}',
                          *flags_], cwd=REPO, capture_output=True, text=True, check=False)
    cpu, wall = _children_cpu_s() - cpu, time.perf_counter() - wall
    if run.returncode:
      raise RuntimeError(f'the build failed:\n{run.stderr[-3000:]}')
    max_rss_mb = int(run.stderr.strip().splitlines()[-1]) / 1024
    dataset = next(pathlib.Path(data_dir).glob('switchboard/original/*/metadata.json'))
    index = json.loads(dataset.read_text())['splits']
    dataset_mb = sum(p.stat().st_size for p in dataset.parent.iterdir()) / 1e6
  seconds = sum(sum(split['durations']) for split in index.values())
  return {'conversation_s': round(seconds, 1), 'wall_s': round(wall, 2), 'cpu_s': round(cpu, 2),
          'conversation_s_per_wall_s': round(seconds / wall, 1),
          'conversation_s_per_cpu_s': round(seconds / cpu, 1),
          'max_rss_mb': round(max_rss_mb), 'dataset_mb': round(dataset_mb)}


def main(_):
  root = pathlib.Path(FLAGS.tree_dir)
  sessions = make_tree(root)
  common = {'benchmark': 'build_corpus', 'conversations': len(sessions),
            'minutes': FLAGS.minutes, 'cpus': os.cpu_count(),
            'load_average_1min': round(os.getloadavg()[0], 2)}
  results.record('build_corpus', {**common, 'case': 'stages (one conversation, CPU s)',
                                  **stages(root, sessions[0]), 'numba_compile_s': compile_cpu_s()},
                 ('numpy', 'numba', 'soxr', 'tensorflow-datasets'))
  for runner in FLAGS.runners:
    single = None
    for workers in map(int, FLAGS.workers):
      result = {**common, 'case': f'{runner}, {workers} process(es)',
                **build(root, runner, workers)}
      if workers == 1:
        single = result
      elif single is not None:
        result['wall_speedup_over_1'] = round(single['wall_s'] / result['wall_s'], 2)
      if workers == 1:
        rate = result['conversation_s_per_cpu_s']
        result['projected_core_hours'] = {name: round(hours / rate, 1)
                                          for name, hours in HOURS.items()}
      result['load_average_1min'] = round(os.getloadavg()[0], 2)
      results.record('build_corpus', result, ('numpy', 'numba', 'soxr', 'tensorflow-datasets')
                     + (('apache-beam',) if runner == 'beam' else ()))


if __name__ == '__main__':
  app.run(main)
