"""Evaluation figures (PNG, matplotlib without a display): threshold curves and an excerpt."""

import pathlib

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np

from convssl_jax import metrics

LABELS = {'shift_hold': 'S/H', 'short_long': 'S/L', 'shift_prediction': 'S-pred',
          'backchannel_prediction': 'BC-pred'}
SPEAKER_COLORS = ('tab:blue', 'tab:orange')
# Speaker A's curves in the middle panel (whichever the dialog has).
NEXT_SPEAKER_CURVES = {'p': 'P(next = A)', 'p_now': 'p_now(A)', 'p_future': 'p_future(A)'}
EVENT_COLORS = {'shift': 'tab:green', 'hold': 'tab:red', 'short': 'tab:purple',
                'long': 'tab:brown', 'pred_shift': 'tab:olive', 'pred_bc': 'tab:cyan'}


def threshold_curves(samples, thresholds: dict[str, float], path: pathlib.Path) -> None:
  """Weighted F1 and balanced accuracy against the threshold, one panel per event, the chosen
  threshold marked."""
  events = [e for e in metrics.EVENTS if len(samples.get(e, ((),))[0])]
  fig, axes = plt.subplots(1, max(len(events), 1), figsize=(4 * max(len(events), 1), 3.2),
                           squeeze=False)
  for ax, event in zip(axes[0], events):
    curves = metrics.threshold_curves(*samples[event])
    grid = metrics.THRESHOLD_GRID
    ax.plot(grid, curves['f1_weighted'], label='weighted F1')
    ax.plot(grid, curves['balanced_accuracy'], label='balanced accuracy')
    ax.axvline(thresholds.get(event, 0.5), color='gray', ls='--', lw=1, label='threshold')
    ax.set(title=LABELS[event], xlabel='threshold', ylim=(0, 1))
  axes[0][0].legend(loc='lower center', fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _busiest_start(events: dict[str, np.ndarray], frames: int, length: int) -> int:
  """The first frame of the `length`-frame excerpt holding the most event frames (1 s steps)."""
  if frames <= length:
    return 0
  total = sum(m.any(-1).astype(int) for m in events.values())
  sums = np.convolve(total, np.ones(length, int), mode='valid')
  return int(np.argmax(sums))


def excerpt(dialog: dict[str, np.ndarray], events: dict[str, np.ndarray], *, frame_hz: int,
            seconds: float, path: pathlib.Path) -> None:
  """Both speakers' VA, the next-speaker and backchannel probabilities and the events (and, with
  an 'envelope' [T, 2], the waveforms), over the `seconds`-long stretch with the most events."""
  events = {k: np.asarray(v).reshape(-1, 2) for k, v in events.items()}
  frames = min(len(v) for k, v in dialog.items() if k != 'va')  # va may hold the horizon too
  length = min(int(seconds * frame_hz), frames)
  start = _busiest_start(events, frames, length)
  t = (start + np.arange(length)) / frame_hz
  window = slice(start, start + length)
  waves = 'envelope' in dialog
  panels = 2 + ('p_bc' in dialog) + waves
  fig, axes = plt.subplots(panels, 1, figsize=(12, 1.8 * panels + 0.6), sharex=True)
  if waves:  # both waveforms as their per-frame peak envelopes (scaled to the loudest), B below A
    env = dialog['envelope'][window]
    env = env / max(float(env.max()), 1e-9)
    for s, sign in ((0, 1), (1, -1)):
      axes[0].fill_between(t, 0, sign * env[:, s], color=SPEAKER_COLORS[s], step='post', lw=0)
    axes[0].set(ylim=(-1, 1), yticks=[0.5, -0.5], yticklabels=['A', 'B'], title='waveforms')
    axes = axes[1:]
  va = dialog['va'][window]
  for s, name in enumerate('AB'):
    axes[0].fill_between(t, s, s + 0.8 * va[:, s], step='post', color=SPEAKER_COLORS[s],
                         label=f'speaker {name}')
  for key, color in EVENT_COLORS.items():
    for s in range(2):
      on = events.get(key, np.zeros((frames, 2), bool))[window, s]
      if on.any():
        axes[0].fill_between(t, s - 0.15, s - 0.05, where=on, step='post', color=color,
                             label=key if s == 0 or not events[key][window, 0].any() else None)
  axes[0].set(yticks=[0.4, 1.4], yticklabels=['A', 'B'], ylim=(-0.2, 2),
              title='voice activity and events')
  axes[0].legend(loc='upper right', ncol=4, fontsize=7)
  for key, label in NEXT_SPEAKER_CURVES.items():
    if key in dialog:
      axes[1].plot(t, dialog[key][window, 0], label=label)
  axes[1].axhline(0.5, color='gray', lw=0.5)
  axes[1].set(ylim=(0, 1), ylabel='next speaker')
  axes[1].legend(loc='upper right', fontsize=7)
  if 'p_bc' in dialog:
    for s, name in enumerate('AB'):
      axes[2].plot(t, dialog['p_bc'][window, s], color=SPEAKER_COLORS[s],
                   label=f'P(backchannel by {name})')
    axes[2].set(ylim=(0, 1), ylabel='backchannel')
    axes[2].legend(loc='upper right', fontsize=7)
  axes[-1].set_xlabel('seconds')
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
