// ConvsslPlot: per-frame turn-taking signals on a canvas, for the offline viewer (viewer.js) and
// any page that draws frames as they arrive. Plain browser JavaScript, no dependencies.
//
//   Series  one signal per frame, values 0..255 (probabilities x 255), with a min/max pyramid:
//           level k holds the min and max of each 2^k frames, so a redraw visits about two
//           bins per pixel at any zoom. extend() appends frames and updates only the bins they
//           touch (the offline page builds each series with one call).
//   Plot    lanes stacked on a canvas over a shared time axis: 'wave' (two envelopes, A up, B
//           down), 'bars' (rows of on/off series, >= 128 is on), 'curves' (lines in [0, 1]);
//           the view {start, span} in seconds; wheel zoom, drag scroll, click -> onSeek(t),
//           hover -> onHover(t); a cursor on a second canvas, cheap to move every frame.
const ConvsslPlot = (() => {
  'use strict';

  const ON = 128;  // a bars series is on where its value is >= ON

  function grown(array, need) {
    if (array.length >= need) return array;
    const bigger = new Uint8Array(Math.max(need, 2 * array.length));
    bigger.set(array);
    return bigger;
  }

  class Series {
    constructor(values) {
      this.length = 0;
      this.values = new Uint8Array(values ? values.length : 0);
      this.pyramid = [];  // level k >= 1 at [k - 1]: {min, max}
      if (values) this.extend(values);
    }

    // Appends frames (a Uint8Array) and recomputes the pyramid bins they fall in.
    extend(values) {
      let from = this.length;
      const n = from + values.length;
      this.values = grown(this.values, n);
      this.values.set(values, from);
      this.length = n;
      let min = this.values, max = this.values, size = n;
      for (let k = 1; size > 1; k++) {
        const below = size;
        size = Math.ceil(size / 2);
        from >>= 1;
        const level = this.pyramid[k - 1] || (this.pyramid[k - 1] = {
          min: new Uint8Array(size), max: new Uint8Array(size)});
        level.min = grown(level.min, size);
        level.max = grown(level.max, size);
        for (let j = from; j < size; j++) {
          const a = 2 * j, b = Math.min(a + 1, below - 1);
          level.min[j] = Math.min(min[a], min[b]);
          level.max[j] = Math.max(max[a], max[b]);
        }
        min = level.min;
        max = level.max;
      }
    }

    // Empties the series (a live page's next session).
    clear() {
      this.length = 0;
      this.pyramid = [];
    }

    // {min, max, size} of level k (0: the frames themselves); k past the top is the top.
    level(k) {
      k = Math.min(k, this.pyramid.length);
      const size = Math.ceil(this.length / 2 ** k);
      return k ? {...this.pyramid[k - 1], size, k} : {min: this.values, max: this.values, size, k};
    }
  }

  const NICE_STEPS = [0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900,
                      1800, 3600, 7200];

  // t seconds as "12.3 s", "4:05.6" or "1:02:03", with the decimals that `step` needs.
  function clock(t, step) {
    const digits = step < 0.1 ? 2 : step < 1 ? 1 : 0;
    t = Math.round(t * 10 ** digits) / 10 ** digits;
    const h = Math.floor(t / 3600), m = Math.floor((t % 3600) / 60), s = t % 60;
    const sec = s.toFixed(digits).padStart(digits ? digits + 3 : 2, '0');
    if (h) return `${h}:${String(m).padStart(2, '0')}:${sec}`;
    return m ? `${m}:${sec}` : `${s.toFixed(digits)} s`;
  }

  class Plot {
    // container: an empty element; options: {frameHz, lanes, margin, minSpan, onSeek, onHover}.
    // A lane: {kind, label, height, ...}: 'wave' {series: [a, b], colors, top, bottom}; 'bars'
    // {rows: [{label, color, series: [..] (one above the other in the row)}]}; 'curves' {lines:
    // [{series, color, label}], guide (a value in [0, 1] to mark), top, bottom (axis labels)}.
    constructor(container, options) {
      this.frameHz = options.frameHz;
      this.lanes = options.lanes;
      this.margin = options.margin || 96;
      this.minSpan = options.minSpan || 40 / options.frameHz;
      this.onSeek = options.onSeek || (() => {});
      this.onHover = options.onHover || (() => {});
      this.axisHeight = 22;
      this.height = this.lanes.reduce((h, lane) => h + lane.height, 0) + this.axisHeight;
      this.view = {start: 0, span: this.duration()};
      this.cursor = null;
      this.hover = null;
      this.lastDrawMs = 0;
      this.draws = 0;
      container.style.position = 'relative';
      container.style.height = `${this.height}px`;
      this.base = this._canvas(container);
      this.overlay = this._canvas(container);
      this.overlay.style.cursor = 'crosshair';
      this._listen();
      new ResizeObserver(() => this._resize()).observe(container);
      this._resize();
    }

    // Seconds of the longest series.
    duration() {
      const frames = this.lanes.flatMap(lane => lane.kind === 'wave' ? lane.series
        : lane.kind === 'bars' ? lane.rows.flatMap(row => row.series)
        : lane.lines.map(line => line.series)).reduce((n, s) => Math.max(n, s.length), 1);
      return frames / this.frameHz;
    }

    // The plot area in CSS pixels: x of the first and last instant shown.
    get left() { return this.margin; }
    get width() { return Math.max(this.base.clientWidth - this.margin - 16, 10); }
    timeAt(x) { return this.view.start + (x - this.left) / this.width * this.view.span; }
    xAt(t) { return this.left + (t - this.view.start) / this.view.span * this.width; }

    setView(start, span) {
      const duration = this.duration();
      span = Math.min(Math.max(span, Math.min(this.minSpan, duration)), duration);
      start = Math.min(Math.max(start, 0), duration - span);
      if (start === this.view.start && span === this.view.span) return;
      this.view = {start, span};
      this.requestDraw();
    }

    // Zooms by `factor` (< 1 in) keeping the instant `at` (default: the middle) where it is.
    zoom(factor, at) {
      const {start, span} = this.view;
      if (at === undefined) at = start + span / 2;
      const next = Math.min(Math.max(span * factor, this.minSpan), this.duration());
      this.setView(at - (at - start) * next / span, next);
    }

    scroll(seconds) { this.setView(this.view.start + seconds, this.view.span); }

    // During playback: turns the page when t leaves the view (or nears its right edge).
    follow(t) {
      const {start, span} = this.view;
      if (t < start || t > start + 0.95 * span) this.setView(t - 0.05 * span, span);
    }

    setCursor(t) {
      if (t === this.cursor) return;
      this.cursor = t;
      this._drawOverlay();
    }

    requestDraw() {
      if (this._pending) return;
      this._pending = requestAnimationFrame(() => { this._pending = 0; this.draw(); });
    }

    draw() {
      const t0 = performance.now();
      const ctx = this.base.getContext('2d');
      const ratio = this.ratio;
      ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
      ctx.clearRect(0, 0, this.base.width, this.base.height);
      ctx.font = '11px sans-serif';
      ctx.textBaseline = 'middle';
      // Bins of 2^level frames: between one and two per device pixel.
      const framesPerPixel = this.view.span * this.frameHz / (this.width * ratio);
      const level = framesPerPixel >= 2 ? Math.floor(Math.log2(framesPerPixel)) : 0;
      let top = 0;
      for (const lane of this.lanes) {
        ctx.save();
        ctx.beginPath();
        ctx.rect(this.left, top, this.width, lane.height);
        ctx.clip();
        this[`_${lane.kind}`](ctx, lane, top, level);
        ctx.restore();
        this._laneFrame(ctx, lane, top);
        top += lane.height;
      }
      this._axis(ctx, top);
      this._drawOverlay();
      this.lastDrawMs = performance.now() - t0;
      this.draws++;
      return this.lastDrawMs;
    }

    // The bins of `level` that the view shows, [first, end), their min and max, and the x of a
    // bin's left edge.
    _bins(series, level) {
      const {min, max, size, k} = series.level(level);
      const bin = 2 ** k, hz = this.frameHz;
      const first = Math.max(Math.floor(this.view.start * hz / bin), 0);
      const end = Math.min(Math.ceil((this.view.start + this.view.span) * hz / bin) + 1, size);
      const scale = this.width / this.view.span * bin / hz;
      const x0 = this.left - this.view.start / this.view.span * this.width;
      return {first, end, min, max, x: b => x0 + b * scale, binWidth: scale};
    }

    _wave(ctx, lane, top, level) {
      const mid = top + lane.height / 2, half = lane.height / 2 - 2;
      lane.series.forEach((series, i) => {
        const sign = i === 0 ? -1 : 1;
        const {first, end, max, x, binWidth} = this._bins(series, level);
        ctx.beginPath();
        ctx.moveTo(x(first), mid);
        for (let b = first; b < end; b++) {
          const y = mid + sign * max[b] / 255 * half;
          ctx.lineTo(x(b), y);
          ctx.lineTo(x(b) + binWidth, y);
        }
        ctx.lineTo(x(end), mid);
        ctx.closePath();
        ctx.fillStyle = lane.colors[i];
        ctx.fill();
      });
    }

    _bars(ctx, lane, top, level) {
      const rowHeight = lane.height / lane.rows.length;
      lane.rows.forEach((row, r) => {
        const part = (rowHeight - 3) / row.series.length;
        row.series.forEach((series, i) => {
          const y = top + r * rowHeight + 1.5 + i * part;
          const {first, end, max, x} = this._bins(series, level);
          ctx.fillStyle = row.color;
          let runStart = -1;
          for (let b = first; b <= end; b++) {
            const on = b < end && max[b] >= ON;
            if (on && runStart < 0) runStart = b;
            if (!on && runStart >= 0) {
              ctx.fillRect(x(runStart), y, Math.max(x(b) - x(runStart), 1), part - 1);
              runStart = -1;
            }
          }
        });
      });
    }

    _curves(ctx, lane, top, level) {
      const y = v => top + 3 + (1 - v / 255) * (lane.height - 6);
      if (lane.guide !== undefined) {
        ctx.strokeStyle = '#bbb';
        ctx.lineWidth = 0.5;
        ctx.beginPath();
        ctx.moveTo(this.left, y(lane.guide * 255));
        ctx.lineTo(this.left + this.width, y(lane.guide * 255));
        ctx.stroke();
      }
      for (const line of lane.lines) {
        const {first, end, min, max, x, binWidth} = this._bins(line.series, level);
        ctx.fillStyle = line.color;
        ctx.strokeStyle = line.color;
        if (binWidth * this.ratio > 2) {  // frames wider than 2 pixels: a line through them
          ctx.beginPath();
          for (let b = first; b < end; b++) ctx.lineTo(x(b) + binWidth / 2, y(max[b]));
          ctx.lineWidth = 1.25;
          ctx.stroke();
          continue;
        }
        // Narrower: a bar per device pixel over the [min, max] of its bins, each bin's widened
        // to meet the previous one's (a jump stays joined): software rasterization is faster
        // for these axis-aligned rectangles than for one polygon of steps or a stroked zigzag.
        const ratio = this.ratio;
        let column = Math.floor(x(first) * ratio), hi = 0, lo = 255;
        const bar = () => {
          const high = y(hi) - 0.6;
          ctx.fillRect(column / ratio, high, 1 / ratio, y(lo) + 0.6 - high);
        };
        for (let b = first; b < end; b++) {
          const c = Math.floor(x(b) * ratio);
          if (c !== column) {
            bar();
            column = c;
            hi = 0;
            lo = 255;
          }
          hi = Math.max(hi, max[b], b > first ? min[b - 1] : 0);
          lo = Math.min(lo, min[b], b > first ? max[b - 1] : 255);
        }
        bar();
      }
      // The lines' names, top right.
      let right = this.left + this.width - 4;
      ctx.textAlign = 'right';
      for (const line of [...lane.lines].reverse()) {
        ctx.fillStyle = 'rgba(255,255,255,0.8)';
        const w = ctx.measureText(line.label).width;
        ctx.fillRect(right - w - 2, top + 2, w + 4, 13);
        ctx.fillStyle = line.color;
        ctx.fillText(line.label, right, top + 9);
        right -= w + 14;
      }
      ctx.textAlign = 'left';
    }

    _laneFrame(ctx, lane, top) {
      ctx.strokeStyle = '#ddd';
      ctx.lineWidth = 1;
      ctx.strokeRect(this.left + 0.5, top + 0.5, this.width - 1, lane.height - 1);
      ctx.fillStyle = '#222';
      ctx.textAlign = 'left';
      ctx.fillText(lane.label, 4, top + 9);
      ctx.fillStyle = '#666';
      ctx.textAlign = 'right';
      const marks = lane.kind === 'bars' ? lane.rows.map((row, r) => [row.label,
        top + (r + 0.5) * lane.height / lane.rows.length])
        : [[lane.top, top + 9], [lane.bottom, top + lane.height - 8]];
      for (const [text, y] of marks) if (text) ctx.fillText(text, this.left - 4, y);
      ctx.textAlign = 'left';
    }

    _axis(ctx, top) {
      const {start, span} = this.view;
      const step = NICE_STEPS.find(s => s / span * this.width >= 90) || NICE_STEPS.at(-1);
      ctx.fillStyle = '#444';
      ctx.strokeStyle = '#999';
      ctx.textAlign = 'center';
      ctx.beginPath();
      for (let t = Math.ceil(start / step) * step; t <= start + span + 1e-9; t += step) {
        const x = Math.round(this.xAt(t)) + 0.5;
        ctx.moveTo(x, top);
        ctx.lineTo(x, top + 4);
        const label = clock(t, step), half = ctx.measureText(label).width / 2;
        ctx.fillText(label, Math.min(x, this.base.clientWidth - half - 1), top + 13);
      }
      ctx.stroke();
      ctx.textAlign = 'left';
    }

    _drawOverlay() {
      const ctx = this.overlay.getContext('2d');
      ctx.setTransform(this.ratio, 0, 0, this.ratio, 0, 0);
      ctx.clearRect(0, 0, this.overlay.width, this.overlay.height);
      const mark = (t, color) => {
        if (t === null) return;
        const x = this.xAt(t);
        if (x < this.left || x > this.left + this.width) return;
        ctx.fillStyle = color;
        ctx.fillRect(Math.round(x) - 0.5, 0, 1.5, this.height - this.axisHeight);
      };
      mark(this.hover, 'rgba(0,0,0,0.25)');
      mark(this.cursor, '#d62728');
    }

    _canvas(container) {
      const canvas = document.createElement('canvas');
      Object.assign(canvas.style, {position: 'absolute', left: '0', top: '0', width: '100%',
                                   height: `${this.height}px`});
      container.appendChild(canvas);
      return canvas;
    }

    _resize() {
      this.ratio = window.devicePixelRatio || 1;
      for (const canvas of [this.base, this.overlay]) {
        canvas.width = Math.round(canvas.clientWidth * this.ratio);
        canvas.height = Math.round(this.height * this.ratio);
      }
      this.draw();
    }

    _listen() {
      const el = this.overlay;
      const localX = e => e.clientX - el.getBoundingClientRect().left;
      let press = null;
      el.addEventListener('pointerdown', e => {
        press = {x: localX(e), start: this.view.start, dragged: false};
        el.setPointerCapture(e.pointerId);
      });
      el.addEventListener('pointermove', e => {
        const x = localX(e);
        if (press && (press.dragged || Math.abs(x - press.x) > 3)) {
          press.dragged = true;
          this.setView(press.start - (x - press.x) / this.width * this.view.span, this.view.span);
        }
        this.hover = x >= this.left ? this.timeAt(x) : null;
        this._drawOverlay();
        this.onHover(this.hover);
      });
      el.addEventListener('pointerup', e => {
        const x = localX(e);
        if (press && !press.dragged && x >= this.left) this.onSeek(this.timeAt(x));
        press = null;
      });
      el.addEventListener('pointerleave', () => {
        this.hover = null;
        this._drawOverlay();
        this.onHover(null);
      });
      el.addEventListener('wheel', e => {
        e.preventDefault();
        const unit = e.deltaMode === 1 ? 16 : e.deltaMode === 2 ? this.width : 1;
        const dx = e.deltaX * unit, dy = e.deltaY * unit;
        if (e.shiftKey || Math.abs(dx) > Math.abs(dy)) {
          this.scroll((Math.abs(dx) > Math.abs(dy) ? dx : dy) / this.width * this.view.span);
        } else {
          this.zoom(Math.exp(dy * 0.002), this.timeAt(localX(e)));
        }
      }, {passive: false});
    }
  }

  return {Series, Plot, clock};
})();
