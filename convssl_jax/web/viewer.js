// The offline viewer of one prediction (written by convssl_jax/viewer.py): reads the frames the
// page carries, lays out the lanes, and ties the plot to the <audio> element. Exposes
// window.viewer = {plot, audio, series, meta, ready} once drawn (and performance mark
// 'convssl-ready').
(async () => {
  'use strict';
  const {Series, Plot, clock} = ConvsslPlot;
  const $ = id => document.getElementById(id);
  const A = '#1f77b4', B = '#ff7f0e';
  const EVENT_COLORS = {shift: '#2ca02c', hold: '#d62728', short: '#9467bd', long: '#8c564b',
                        pred_shift: '#bcbd22', pred_shift_neg: '#c7c7a0', pred_bc: '#17becf',
                        pred_bc_neg: '#9edae5'};
  const NEXT = {p: ['P(next = A)', '#2ca02c'], p_now: ['p_now(A)', '#1f77b4'],
                p_future: ['p_future(A)', '#9467bd']};

  const notice = text => {
    $('notice').textContent = text;
    $('notice').hidden = false;
  };

  // The frames: base64 of gzip of the tracks' uint8 frames, one track after the other.
  async function frames(meta) {
    const text = atob($('convssl-frames').textContent.trim());
    const packed = new Uint8Array(text.length);
    for (let i = 0; i < text.length; i++) packed[i] = text.charCodeAt(i);
    const stream = new Blob([packed]).stream().pipeThrough(new DecompressionStream('gzip'));
    const bytes = new Uint8Array(await new Response(stream).arrayBuffer());
    if (bytes.length !== meta.tracks.length * meta.frames) {
      throw new Error(`the page's frames hold ${bytes.length} bytes, not ` +
                      `${meta.tracks.length} x ${meta.frames}`);
    }
    const series = {};
    meta.tracks.forEach((name, i) => {
      series[name] = new Series(bytes.subarray(i * meta.frames, (i + 1) * meta.frames));
    });
    return series;
  }

  function lanes(meta, series) {
    const out = [];
    if (series.envelope_A) {
      out.push({kind: 'wave', label: 'waveforms', height: 72, top: 'A', bottom: 'B',
                series: [series.envelope_A, series.envelope_B], colors: [A, B]});
    }
    out.push({kind: 'bars', label: meta.va_label, height: 34,
              rows: [{label: 'A', color: A, series: [series.va_A]},
                     {label: 'B', color: B, series: [series.va_B]}]});
    if (meta.events.length) {
      out.push({kind: 'bars', label: 'events', height: 15 * meta.events.length + 4,
                rows: meta.events.map(name => ({
                  label: name, color: EVENT_COLORS[name] || '#7f7f7f',
                  series: [series[`${name}_A`], series[`${name}_B`]]}))});
    }
    const next = Object.keys(NEXT).filter(k => series[`${k}_A`]);
    if (next.length) {
      out.push({kind: 'curves', label: 'next speaker', height: 96, guide: 0.5, top: 'A',
                bottom: 'B', lines: next.map(k => ({series: series[`${k}_A`], label: NEXT[k][0],
                                                    color: NEXT[k][1]}))});
    }
    for (const [key, label] of [['p_bc', 'backchannel'], ['vad', 'model VAD']]) {
      if (!series[`${key}_A`]) continue;
      out.push({kind: 'curves', label, height: 64, top: '1', bottom: '0',
                lines: [{series: series[`${key}_A`], label: `${key}(A)`, color: A},
                        {series: series[`${key}_B`], label: `${key}(B)`, color: B}]});
    }
    return out;
  }

  // What the frames say at time t (the hovered instant, else the cursor).
  function readout(meta, series, t) {
    if (t === null) return '';
    const i = Math.min(Math.max(Math.floor(t * meta.frame_hz), 0), meta.frames - 1);
    const value = name => (series[name].values[i] / 255).toFixed(2);
    const parts = [clock(t, 0.01)];
    for (const key of ['p', 'p_now', 'p_future']) {
      if (series[`${key}_A`]) parts.push(`${key}(A) ${value(`${key}_A`)}`);
    }
    if (series.p_bc_A) parts.push(`p_bc A ${value('p_bc_A')} B ${value('p_bc_B')}`);
    const on = meta.events.flatMap(name => ['A', 'B'].filter(
      s => series[`${name}_${s}`].values[i] >= 128).map(s => `${name} ${s}`));
    if (on.length) parts.push(on.join(', '));
    return parts.join(' · ');
  }

  try {
    const meta = JSON.parse($('convssl-meta').textContent);
    const series = await frames(meta);
    const audio = $('audio');
    const hasAudio = Boolean(audio.getAttribute('src'));
    let cursor = 0;
    const plot = new Plot($('plot'), {
      frameHz: meta.frame_hz, lanes: lanes(meta, series),
      onSeek: t => {
        cursor = t;
        if (hasAudio) audio.currentTime = t;
        plot.setCursor(t);
        $('time').textContent = `${clock(t, 0.1)} / ${clock(plot.duration(), 1)}`;
      },
      onHover: t => { $('readout').textContent = readout(meta, series, t ?? cursor); },
    });
    plot.setCursor(0);
    $('time').textContent = `${clock(0, 0.1)} / ${clock(plot.duration(), 1)}`;

    // The cursor follows playback, once per animation frame while playing.
    const tick = () => {
      cursor = audio.currentTime;
      plot.setCursor(cursor);
      if ($('follow').checked) plot.follow(cursor);
      $('time').textContent = `${clock(cursor, 0.1)} / ${clock(plot.duration(), 1)}`;
      if (!audio.paused) requestAnimationFrame(tick);
    };
    const play = () => {
      if (!hasAudio) return;
      if (audio.paused) audio.play().catch(err => notice(`cannot play: ${err.message}`));
      else audio.pause();
    };
    audio.addEventListener('play', () => { $('play').textContent = '❚❚ pause'; tick(); });
    audio.addEventListener('pause', () => { $('play').textContent = '▶ play'; });
    audio.addEventListener('seeked', tick);
    audio.addEventListener('error', () => notice(
      `The audio ${audio.getAttribute('src').slice(0, 200)} cannot be played: it is referenced ` +
      'relative to this page; keep the two together. The curves below do not need it.'));
    $('play').disabled = !hasAudio;
    $('play').addEventListener('click', play);
    $('zoom-in').addEventListener('click', () => plot.zoom(0.5));
    $('zoom-out').addEventListener('click', () => plot.zoom(2));
    $('zoom-all').addEventListener('click', () => plot.setView(0, plot.duration()));
    document.addEventListener('keydown', e => {
      // Buttons, the checkbox and the audio controls keep their own keys.
      if (e.target.closest('input, button, audio') || e.ctrlKey || e.metaKey || e.altKey) return;
      const span = plot.view.span;
      const keys = {' ': play, '+': () => plot.zoom(0.5), '=': () => plot.zoom(0.5),
                    '-': () => plot.zoom(2), ArrowLeft: () => plot.scroll(-span / 4),
                    ArrowRight: () => plot.scroll(span / 4), Home: () => plot.scroll(-Infinity),
                    End: () => plot.scroll(Infinity)};
      if (keys[e.key]) {
        e.preventDefault();
        keys[e.key]();
      }
    });
    window.viewer = {plot, audio, series, meta, ready: true};
    performance.mark('convssl-ready');
  } catch (err) {
    notice(`This page could not show its prediction: ${err.message}`);
    throw err;
  }
})();
