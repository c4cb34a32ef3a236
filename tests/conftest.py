"""Test-wide JAX settings: CPU, full-precision matmuls so parity tolerances mean something, and a
persistent compilation cache shared by the test processes (many tests compile the same steps)."""
import pathlib

import jax
import pytest

jax.config.update("jax_default_matmul_precision", "highest")
jax.config.update("jax_compilation_cache_dir",
                  str(pathlib.Path(__file__).parent.parent / ".pytest_cache" / "jax"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
  """A data_dir for the `tiny` variants' synthetic corpus (built by the first test that uses it)."""
  return str(tmp_path_factory.mktemp("tiny_data"))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
  """(config, workdir) of `configs/vap.py:tiny` trained for 4 steps on its own small corpus."""
  from configs import vap
  from convssl_jax import train

  root = tmp_path_factory.mktemp("tiny_run")
  config = vap.get_config("tiny")
  config.data.data_dir = str(root / "data")
  config.train.update(steps=4, eval_every=4, checkpoint_every=4)
  config.eval.events.min_context = 1.0  # the tiny corpus's dialogs last 20 s
  train.train_and_evaluate(config, root / "model")
  return config, root / "model"


# The command line of `tiny_cli_run`'s training: configs/vap.py:tiny with these overrides.
TINY_CLI_OVERRIDES = {"train.steps": 2, "train.eval_every": 2, "train.checkpoint_every": 2,
                      "eval.events.min_context": 1.0}


@pytest.fixture(scope="session")
def tiny_cli_run(tmp_path_factory, tiny_data_dir):
  """A workdir of `configs/vap.py:tiny` trained for 2 steps by `run.py` as a user runs it (so it
  records its config, and the VA-only baseline its own in WORKDIR/va_only), then evaluated."""
  from tests import processes

  workdir = tmp_path_factory.mktemp("tiny_cli_run") / "run"
  out = processes.run("run.py", "--config=configs/vap.py:tiny", f"--workdir={workdir}",
                      f"--config.data.data_dir={tiny_data_dir}",
                      *(f"--config.{k}={v}" for k, v in TINY_CLI_OVERRIDES.items()), timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  return workdir


@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
  """A headless Chromium driven by selenium (tests/browser.py), with a fresh profile. Where none can
  start, the test is skipped with the reason and the fix (shown in pytest's summary: -rs)."""
  from tests import browser

  if reason := browser.unavailable():
    pytest.skip(f"browser test: {reason}")
  try:
    driver = browser.start(tmp_path_factory.mktemp("chromium_profile"))
  except Exception as err:  # pylint: disable=broad-except  # selenium's or the OS's: say which
    pytest.skip(f"browser test: chromium does not start here: {str(err).strip().splitlines()[0]}")
  yield driver
  driver.quit()
