"""Figures (PNG, matplotlib without a display): evaluation threshold curves and excerpts, and a
prediction's pages."""

import pathlib
from collections.abc import Iterator

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
PAGE_S = 60.0  # seconds per page of a prediction's plot
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


def _frames(dialog: dict[str, np.ndarray]) -> int:
  return min(len(v) for k, v in dialog.items() if k != 'va')  # va may hold the horizon too


def _figure(dialog: dict[str, np.ndarray], events: dict[str, np.ndarray], window: slice, *,
            frame_hz: int, span_s: float, va_label: str = 'voice activity and events'):
  """The panels of `window` (frames) on an x axis `span_s` seconds long from its start: both
  waveforms (with an 'envelope' [T, 2]; a channel silent over the whole recording labelled so),
  both speakers' VA ('va' [T, 2], if given) with the events (`va_label` titles the panel) and,
  given a 'vad' [T, 2], the model's VAD curves over them; speaker A's next-speaker curves; both
  backchannel curves."""
  t = np.arange(window.start, window.stop) / frame_hz
  waves = 'envelope' in dialog
  panels = 2 + ('p_bc' in dialog) + waves
  fig, axes = plt.subplots(panels, 1, figsize=(12, 1.8 * panels + 0.9), sharex=True)
  if waves:  # both waveforms as their per-frame peak envelopes (scaled to the loudest), B below A
    whole = np.asarray(dialog['envelope'])
    env = whole[window] / max(float(whole.max(initial=0)), 1e-9)
    for s, sign in ((0, 1), (1, -1)):
      axes[0].fill_between(t, 0, sign * env[:, s], color=SPEAKER_COLORS[s], step='post', lw=0)
      if not whole[:, s].any():
        axes[0].text(0.5, 0.5 + 0.25 * sign, f'speaker {"AB"[s]}: silent channel '
                     '(all samples zero)', transform=axes[0].transAxes, ha='center',
                     va='center', color='gray', fontsize=9)
    axes[0].set(ylim=(-1, 1), yticks=[0.5, -0.5], yticklabels=['A', 'B'], title='waveforms')
    axes = axes[1:]
  for s, name in enumerate('AB'):
    if 'va' in dialog:
      va = dialog['va'][window, s]
      axes[0].fill_between(t, s, s + 0.8 * va, step='post', color=SPEAKER_COLORS[s], alpha=0.6,
                           label=f'speaker {name}' if va.any() else None)
    if 'vad' in dialog:
      axes[0].plot(t, s + 0.8 * dialog['vad'][window, s], color='black', lw=0.8,
                   label='model VAD (0-1)' if s == 0 else None)
      axes[0].axhline(s + 0.4, color='gray', lw=0.5, ls=':')
  for key, color in EVENT_COLORS.items():
    for s in range(2):
      on = events.get(key, np.zeros((window.stop, 2), bool))[window, s]
      if on.any():
        axes[0].fill_between(t, s - 0.15, s - 0.05, where=on, step='post', color=color,
                             label=key if s == 0 or not events[key][window, 0].any() else None)
  axes[0].set(yticks=[0.4, 1.4], yticklabels=['A', 'B'], ylim=(-0.2, 2), title=va_label)
  if axes[0].get_legend_handles_labels()[0]:
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
  axes[-1].set(xlabel='seconds', xlim=(window.start / frame_hz, window.start / frame_hz + span_s))
  return fig


def excerpt(dialog: dict[str, np.ndarray], events: dict[str, np.ndarray], *, frame_hz: int,
            seconds: float, path: pathlib.Path) -> None:
  """`_figure` over the `seconds`-long stretch with the most events."""
  events = {k: np.asarray(v).reshape(-1, 2) for k, v in events.items()}
  frames = _frames(dialog)
  length = min(int(seconds * frame_hz), frames)
  start = _busiest_start(events, frames, length)
  fig = _figure(dialog, events, slice(start, start + length), frame_hz=frame_hz,
                span_s=max(length, 1) / frame_hz)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def page_paths(stem_path: pathlib.Path, pages: int) -> list[pathlib.Path]:
  """Where the pages go: `<stem>.png` for one, `<stem>.p01.png`, `<stem>.p02.png`, ... for more
  (numbers padded to sort in order)."""
  if pages <= 1:
    return [stem_path.with_name(f'{stem_path.name}.png')]
  width = max(2, len(str(pages)))
  return [stem_path.with_name(f'{stem_path.name}.p{k:0{width}d}.png') for k in range(1, pages + 1)]


def page_figures(dialog: dict[str, np.ndarray], events: dict[str, np.ndarray], *, frame_hz: int,
                 stem_path: pathlib.Path, title: str, subtitle: str = '', va_label: str,
                 page_s: float = PAGE_S) -> Iterator[tuple[pathlib.Path, plt.Figure]]:
  """A whole prediction as `_figure`s of `page_s` seconds each (the same time scale on every
  page, so turns stay visible however long the recording), titled `title` (the file), the page's
  time span and `subtitle` (model and checkpoint); with the path of each (`page_paths`), one
  figure at a time (the caller closes it)."""
  events = {k: np.asarray(v).reshape(-1, 2) for k, v in events.items()}
  frames = _frames(dialog)
  per_page = max(int(round(page_s * frame_hz)), 1)
  count = max(-(-frames // per_page), 1)
  for k, path in enumerate(page_paths(stem_path, count)):
    window = slice(k * per_page, min((k + 1) * per_page, frames))
    fig = _figure(dialog, events, window, frame_hz=frame_hz, span_s=per_page / frame_hz,
                  va_label=va_label)
    span = f'{window.start / frame_hz:g}-{window.stop / frame_hz:g} s'
    page = f', page {k + 1} of {count}' if count > 1 else ''
    fig.suptitle(f'{title}: {span}{page}' + (f'\n{subtitle}' if subtitle else ''), fontsize=10)
    fig.tight_layout()
    yield path, fig


def pages(dialog, events, **kwargs) -> list[pathlib.Path]:
  """`page_figures` written as PNG files; their paths."""
  paths = []
  for path, fig in page_figures(dialog, events, **kwargs):
    fig.savefig(path, dpi=100)
    plt.close(fig)
    paths.append(path)
  return paths
