"""Regenerates the README's figures: runs each one's command, records it, rewrites its README block.

  python benchmarks/readme_figures.py [--sections=default_run,predict_example,...] [--seeds=0,1,2]
                                      [--out=/tmp/readme_figures]

Sections (each the command a README reader would run, printed beside its figure):
  default_run      `python run.py --config=configs/vap.py --config.seed=K` from nothing (no
                   compilation cache) for every seed: test scores of the model and the VA-only
                   baseline (mean +/- sd over seeds, and each seed), wall time and peak memory
                   (`/usr/bin/time -v`), the validation VAP loss
  predict_example  `--mode=predict` of seed 0's model on a 75-s synthetic dialog it never saw
                   (generator seed 123): the plot docs/predict_example.png and the command's time
  input_pipeline, events, predict, stream
                   the benchmark scripts' own commands (their rows also go to RESULTS.md)

Every section's result, with its commands, the commit, the machine and the date, is stored in
benchmarks/readme_figures.json, and the README's block between `<!-- figures:NAME -->` and
`<!-- /figures:NAME -->` is rewritten from it (tests/test_readme_figures.py checks that every
block is the rendering of the stored result, so the README cannot drift from what was measured).
Run it on an otherwise idle machine: the timings are part of the figures.
"""

import json
import os
import pathlib
import platform
import re
import shutil
import subprocess
import sys
import time

import numpy as np
from absl import app, flags

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIGURES = ROOT / 'benchmarks' / 'readme_figures.json'
README = ROOT / 'README.md'
OUTPUTS = ('README.md', 'benchmarks/readme_figures.json', 'benchmarks/RESULTS.md',
           'docs/predict_example.png')
EVENTS = ('shift_hold', 'short_long', 'shift_prediction', 'backchannel_prediction')
LABELS = {'shift_hold': 'S/H', 'short_long': 'S/L', 'shift_prediction': 'S-pred',
          'backchannel_prediction': 'BC-pred'}
BENCHMARKS = {
    'input_pipeline': [['benchmarks/input_pipeline.py'],
                       ['benchmarks/input_pipeline.py', '--window_s=10', '--mono']],
    'events': [['benchmarks/events.py']],
    'predict': [['benchmarks/predict.py']],
    'stream': [['benchmarks/stream.py', '--audio_s=600']],
}

flags.DEFINE_list('sections', ['default_run', 'predict_example', *BENCHMARKS], 'What to run.')
flags.DEFINE_list('seeds', ['0', '1', '2'], 'default_run: the seeds (--config.seed).')
flags.DEFINE_string('out', '/tmp/readme_figures', 'Workdirs and outputs of the runs.')
FLAGS = flags.FLAGS


def _commit() -> str:
  head = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, capture_output=True,
                        text=True, check=True).stdout.strip()
  # Changed files other than what this script and the benchmarks write themselves.
  dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no', '--', '.',
                          *(f':!{p}' for p in OUTPUTS)], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.strip()
  return head + ('+changes' if dirty else '')


def _run(args: list[str], log: pathlib.Path) -> tuple[float, float, str]:
  """(wall seconds, peak resident memory in GiB, stdout) of `python ARGS` from the repository
  root, its output also in `log`; raises on failure."""
  command = ['/usr/bin/time', '-v', sys.executable, *args]
  start = time.perf_counter()
  done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False,
                        env={**os.environ, 'PYTHONUNBUFFERED': '1'})
  seconds = time.perf_counter() - start
  log.parent.mkdir(parents=True, exist_ok=True)
  log.write_text(done.stdout + '\n--- stderr ---\n' + done.stderr)
  if done.returncode:
    raise RuntimeError(f'{" ".join(args)} failed ({done.returncode}); see {log}')
  peak_kb = int(re.search(r'Maximum resident set size \(kbytes\): (\d+)', done.stderr)[1])
  return seconds, peak_kb / 2**20, done.stdout


def _shown(args: list[str]) -> str:
  return 'python ' + ' '.join(args)


def default_run(out: pathlib.Path) -> dict:
  seeds = [int(s) for s in FLAGS.seeds]
  runs = []
  for seed in seeds:
    workdir = out / f'default_seed{seed}'
    shutil.rmtree(workdir, ignore_errors=True)
    args = ['run.py', '--config=configs/vap.py', f'--workdir={workdir}', f'--config.seed={seed}',
            '--compilation_cache=']
    seconds, peak, _ = _run(args, out / f'default_seed{seed}.log')
    test = json.loads((workdir / 'eval' / 'test' / 'metrics.json').read_text())['scores']
    losses = json.loads((workdir / 'metrics.json').read_text())
    runs.append({
        'seed': seed, 'seconds': round(seconds, 1), 'peak_gib': round(peak, 2),
        'load_5min': round(os.getloadavg()[1], 1),  # at the end: other work slows the timing
        'val_vap_loss': round(losses['validation']['vap_loss'], 3),
        'test_vap_loss': round(losses['test']['vap_loss'], 3),
        'scores': {model: {e: [round(test[model][e]['f1_weighted'], 3),
                               round(test[model][e]['balanced_accuracy'], 3)] for e in EVENTS}
                   for model in ('model', 'VA only', 'always hold', 'chance')},
        'events': {e: [test['model'][e]['n_positive_events'], test['model'][e]['n_negative_events']]
                   for e in EVENTS},
    })
  return {'command': 'python run.py --config=configs/vap.py --workdir=W --config.seed=K',
          'seeds': seeds, 'runs': runs}


def predict_example(out: pathlib.Path) -> dict:
  import soundfile as sf  # pylint: disable=import-outside-toplevel

  sys.path.insert(0, str(ROOT))
  from data_builders.synthetic_dialogs import generator  # pylint: disable=import-outside-toplevel

  workdir = out / 'default_seed0'
  if not (workdir / 'checkpoints').is_dir():
    raise RuntimeError(f'predict_example predicts with {workdir}: run default_run first')
  dialog = generator.generate_dialog(123, generator.DialogConfig(duration_s=75.0))
  folder = out / 'example'
  shutil.rmtree(folder, ignore_errors=True)
  folder.mkdir(parents=True)
  sf.write(folder / 'dialog.wav', dialog.audio, 16000)
  (folder / 'dialog_va.json').write_text(json.dumps(dialog.va_list))
  args = ['run.py', '--mode=predict', f'--workdir={workdir}', f'--audio={folder / "dialog.wav"}',
          f'--va={folder / "dialog_va.json"}', f'--output={folder / "predictions"}']
  seconds, peak, _ = _run(args, out / 'predict_example.log')
  # 75 s: two pages, 0-60 s (the figure) and 60-75 s.
  shutil.copy(folder / 'predictions' / 'dialog.p01.png', ROOT / 'docs' / 'predict_example.png')
  return {'command': 'python run.py --mode=predict --workdir=W --audio=dialog.wav '
                     '--va=dialog_va.json', 'seconds': round(seconds, 1),
          'peak_gib': round(peak, 2), 'dialog_s': 75.0, 'generator_seed': 123}


def benchmark(name: str, out: pathlib.Path) -> dict:
  rows = []
  for args in BENCHMARKS[name]:
    _, _, stdout = _run(args, out / f'{name}.log')
    rows.append({'command': _shown(args), 'result': json.loads(stdout.strip().splitlines()[-1])})
  return {'rows': rows}


# Rendering: the README blocks, from the stored results alone.

def _mean_sd(values) -> str:
  values = np.asarray(values, np.float64)
  return f'{values.mean():.3f} +/- {values.std(ddof=1) if len(values) > 1 else 0.0:.3f}'


def render(name: str, entry: dict) -> str:
  """The README block of section `name` from its stored entry."""
  measured = f'{entry["date"]}, commit {entry["commit"]}, {entry["machine"]}'
  if name == 'default_run':
    runs = entry['runs']
    lines = [f'Test split, both speaker orders, weighted F1 / balanced accuracy (thresholds from '
             f'validation), mean +/- sd over seeds {entry["seeds"]} of `{entry["command"]}` '
             f'({measured}):', '',
             '| event | model | VA only | always hold | chance | events (pos/neg), seed 0 |',
             '|---|---|---|---|---|---|']
    for e in EVENTS:
      cells = [' / '.join(_mean_sd([r['scores'][m][e][i] for r in runs]) for i in (0, 1))
               for m in ('model', 'VA only', 'always hold', 'chance')]
      pos, neg = runs[0]['events'][e]
      lines.append(f'| {LABELS[e]} | **{cells[0]}** | {" | ".join(cells[1:])} | {pos} / {neg} |')
    lines += ['', 'Per seed (test S/H weighted F1 of the model and the VA-only baseline, '
                  'validation VAP loss, the whole command\'s time and peak memory):', '',
              '| seed | S/H model | S/H VA only | val VAP loss | time (load) | peak memory |',
              '|---|---|---|---|---|---|']
    lines += [f'| {r["seed"]} | {r["scores"]["model"]["shift_hold"][0]:.3f} | '
              f'{r["scores"]["VA only"]["shift_hold"][0]:.3f} | {r["val_vap_loss"]:.3f} | '
              f'{r["seconds"] / 60:.1f} min ({r.get("load_5min", "?")}) | '
              f'{r["peak_gib"]:.1f} GiB |' for r in runs]
    lines += ['', 'Time: the whole command (the corpus built by the first seed, the VA-only '
                  'baseline, evaluation), no compilation cache; load: the machine\'s 5-minute '
                  'load average at its end (2 cores: above 2, other work shared them).']
    return '\n'.join(lines)
  if name == 'predict_example':
    return (f'`{entry["command"]}` on a {entry["dialog_s"]:g}-second synthetic dialog the model '
            f'never saw (generator seed {entry["generator_seed"]}): {entry["seconds"]:.1f} s for '
            f'the whole command, {entry["peak_gib"]:.1f} GiB peak ({measured}).')
  lines = [f'Measured {measured}:', '']
  for row in entry['rows']:
    lines.append(f'- `{row["command"]}`: `{json.dumps(row["result"])}`')
  return '\n'.join(lines)


def block_pattern(name: str) -> re.Pattern:
  return re.compile(rf'(<!-- figures:{name} -->\n)(.*?)(\n<!-- /figures:{name} -->)', re.S)


def write_readme(figures: dict) -> None:
  text = README.read_text()
  for name, entry in figures.items():
    pattern = block_pattern(name)
    if pattern.search(text):
      text = pattern.sub(lambda m, e=entry, n=name: m[1] + render(n, e) + m[3], text)
  README.write_text(text)


def main(_):
  out = pathlib.Path(FLAGS.out)
  out.mkdir(parents=True, exist_ok=True)
  figures = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
  machine = (f'{platform.machine()}, {os.cpu_count()} cores, '
             f'{os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30:.0f} GiB')
  for name in FLAGS.sections:
    load = os.getloadavg()[0]
    if name == 'default_run':
      entry = default_run(out)
    elif name == 'predict_example':
      entry = predict_example(out)
    else:
      entry = benchmark(name, out)
    figures[name] = {**entry, 'commit': _commit(), 'date': time.strftime('%Y-%m-%d'),
                     'machine': machine, 'load_average_before': round(load, 2)}
    FIGURES.write_text(json.dumps(figures, indent=1) + '\n')
    write_readme(figures)
    print(render(name, figures[name]), flush=True)


if __name__ == '__main__':
  app.run(main)
