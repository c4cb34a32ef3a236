"""The README's measured figures are the stored results of benchmarks/readme_figures.py: every
figures block is exactly the rendering of its recorded entry (commands, commit and machine
included), so a figure cannot be edited by hand or outlive a re-measurement."""

import json
import re

from benchmarks import readme_figures


def test_every_readme_figures_block_renders_its_recorded_result():
  text = readme_figures.README.read_text()
  names = re.findall(r'<!-- figures:(\w+) -->', text)
  assert names, 'the README has no figures blocks'
  figures = json.loads(readme_figures.FIGURES.read_text())
  for name in names:
    block = readme_figures.block_pattern(name).search(text)
    assert block, f'figures:{name} has no closing marker'
    assert block[2] == readme_figures.render(name, figures[name]), (
        f'README figures:{name} differs from benchmarks/readme_figures.json; rerun '
        f'python benchmarks/readme_figures.py --sections={name}')


def test_the_default_run_figures_hold_every_seed_and_its_command():
  entry = json.loads(readme_figures.FIGURES.read_text())['default_run']
  assert [run['seed'] for run in entry['runs']] == entry['seeds'] and len(entry['seeds']) >= 3
  assert entry['command'].startswith('python run.py --config=configs/vap.py')
  for run in entry['runs']:
    for model in ('model', 'VA only', 'always hold', 'chance'):
      assert set(run['scores'][model]) == set(readme_figures.EVENTS)
