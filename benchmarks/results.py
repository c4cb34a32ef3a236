"""Recording a benchmark's result: print its JSON line, append a row to benchmarks/RESULTS.md."""

import json
import pathlib
import platform
import sys
import time
from importlib.metadata import version


def record(benchmark: str, result: dict, packages: tuple[str, ...]) -> None:
  """Prints `result` and appends (date, benchmark, machine, package versions, the command that
  ran, the JSON) to RESULTS.md."""
  print(json.dumps(result))
  command = ' '.join(['python', *sys.argv]).strip()
  versions = ', '.join(f'{p} {version(p)}' for p in packages)
  row = (f'| {time.strftime("%Y-%m-%d")} | {benchmark} | '
         f'{platform.processor() or platform.machine()} | {versions} | `{command}` '
         f'| {json.dumps(result)} |\n')
  with open(pathlib.Path(__file__).with_name('RESULTS.md'), 'a') as f:
    f.write(row)
