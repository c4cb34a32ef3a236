"""A config's corpus: `config.data` -> the splits to read (built on first use), and the windows the
model reads from them. The one place that knows `data_builders`.
"""

from convssl_jax import objective as objective_lib
from convssl_jax.data import pipeline
from convssl_jax.models import factory

SPLITS = ('train', 'validation', 'test')


def open_corpora(config, splits=SPLITS) -> dict[str, pipeline.Corpus]:
  """The splits of the corpus `config.data` names: TFDS corpora (built on first use), or with
  data.name='units' the units dataset in data.units_dir (checked against the model's frame rate
  and codebook size)."""
  return open_data(config.data, splits, frame_hz=config.model.frame_hz,
                   n_units=config.model.get('units'))


def open_data(data_cfg, splits, *, frame_hz: int, n_units: int | None = None
              ) -> dict[str, pipeline.Corpus]:
  """`open_corpora` of a `data` block alone (e.g. `units.data`, the audio the units come from)."""
  if data_cfg.name == 'units':
    from convssl_jax.data import unit_store
    opened = unit_store.open_splits(data_cfg.units_dir, splits, frame_hz=frame_hz,
                                    n_units=n_units)
    return {s: pipeline.Corpus(*parts) for s, parts in opened.items()}
  builders = prepare(data_cfg)
  return {s: pipeline.Corpus.from_builders(builders, s) for s in splits}


def prepare(data_cfg):
  """The TFDS builders of `data_cfg`'s corpora, each built on first use."""
  import data_builders
  return data_builders.prepare(data_cfg)


def window_spec(config, objective: objective_lib.VAPObjective | None = None
                ) -> pipeline.WindowSpec:
  """What one model input window of `config` holds."""
  objective = objective or objective_lib.for_model(config.model)
  d = config.data
  return pipeline.WindowSpec(window_s=d.window_s, frame_hz=config.model.frame_hz,
                             horizon_frames=objective.horizon_frames,
                             history_times=tuple(d.history_times), normalize=d.normalize,
                             mono=factory.model_class(config.model).mono_mix,
                             **(dict(signal='units', signal_hz=config.model.frame_hz)
                                if d.name == 'units' else {}))


def describe(config) -> list[str]:
  """Lines describing `config`'s corpora (built first if needed): where each lives, the
  conversations its build skipped, and each split's conversations, hours and windows."""
  d = config.data
  builders = prepare(d)
  lines = []
  for builder in builders:
    lines.append(f'{builder.name}: {builder.data_dir}')
    for split, bad in builder.info.metadata.get('skipped', {}).items():
      lines += [f'  skipped ({split}) {entry["session"]}: {entry["error"]}' for entry in bad]
  for split in builders[0].info.splits:
    corpus = pipeline.Corpus.from_builders(builders, split)
    windows = pipeline.window_table(corpus, d.window_s, d.overlap_s, cover=split != 'train')
    lines.append(f'  {split}: {len(corpus.sessions)} conversations, '
                 f'{corpus.durations.sum() / 3600:.2f} h, {len(windows)} windows of '
                 f'{d.window_s:g} s')
  return lines
