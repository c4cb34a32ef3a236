"""The house stays in layers: every module imports only the layers below it (pyproject.toml's
import-linter contracts, README "Layout")."""

import subprocess
import sysconfig

from tests import processes


def test_the_import_layers_contracts_hold():
  lint = f'{sysconfig.get_path("scripts")}/lint-imports'
  done = subprocess.run([lint, '--no-cache'], cwd=processes.REPO, capture_output=True, text=True,
                        check=False, timeout=300)
  assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
  assert 'Contracts: 2 kept, 0 broken.' in done.stdout

