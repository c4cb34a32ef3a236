// The live page (convssl_jax/serve.py): the microphone (speaker A) and a second input, a partner
// recording or silence (speaker B) streamed over a WebSocket to the server's model, or a recording
// streamed by the server as if live; each frame's outputs drawn as they come back (the bar, the
// meters, and the last 20 s through web/plot.js), with the round-trip latency. Exposes
// window.live: {plot, series, frames: {key: [[A, B], ...]}, rtt, notices, done, closed, ready}.
(() => {
  'use strict';
  const {Series, Plot, clock} = ConvsslPlot;
  const $ = id => document.getElementById(id);
  const meta = JSON.parse($('convssl-meta').textContent);
  const A = '#1f77b4', B = '#ff7f0e';
  const SPAN = 20;  // seconds of curves in view
  const WINDOW = 500;  // latencies kept for the median and p99 (10 s of frames)
  const KEYS = ['p_now', 'p_future', 'p_bc', 'vad', 'level'];

  const live = window.live = {frames: {}, rtt: [], steps: [], notices: [], done: null,
                              closed: null, ready: false};
  let session = null;  // {ws, context, streams, audio, node}

  const notice = text => {
    live.notices.push(text);
    $('notice').textContent = text;
    $('notice').hidden = false;
  };

  // The plot: empty series that each frames message extends.
  const series = {};
  for (const key of KEYS) for (const s of 'AB') series[`${key}_${s}`] = new Series();
  const plot = new Plot($('plot'), {frameHz: meta.frame_hz, lanes: [
    {kind: 'wave', label: 'input level', height: 56, top: 'A', bottom: 'B',
     series: [series.level_A, series.level_B], colors: [A, B]},
    {kind: 'curves', label: 'next speaker', height: 96, guide: 0.5, top: 'A', bottom: 'B',
     lines: [{series: series.p_now_A, label: 'p_now(A)', color: A},
             {series: series.p_future_A, label: 'p_future(A)', color: '#9467bd'}]},
    {kind: 'curves', label: 'backchannel', height: 64, top: '1', bottom: '0',
     lines: [{series: series.p_bc_A, label: 'p_bc(A)', color: A},
             {series: series.p_bc_B, label: 'p_bc(B)', color: B}]},
    {kind: 'curves', label: 'model VAD', height: 64, top: '1', bottom: '0',
     lines: [{series: series.vad_A, label: 'vad(A)', color: A},
             {series: series.vad_B, label: 'vad(B)', color: B}]}]});
  live.plot = plot;
  live.series = series;

  const byte = v => Math.round(Math.min(Math.max(v, 0), 1) * 255);
  const percentile = (values, q) => {
    const sorted = [...values].sort((x, y) => x - y);
    return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
  };
  const ms = x => x === undefined ? '–' : `${x.toFixed(1)} ms`;

  function onFrames(message) {
    const n = message.level.length;
    for (const key of KEYS) {
      if (!message[key]) continue;
      (live.frames[key] = live.frames[key] || []).push(...message[key]);
      // The level is a peak amplitude: its square root shows quiet speech too.
      const value = key === 'level' ? Math.sqrt : v => v;
      ['A', 'B'].forEach((s, i) => series[`${key}_${s}`].extend(
        Uint8Array.from(message[key], frame => byte(value(frame[i])))));
    }
    if (message.stamp !== null) live.rtt.push(performance.now() - message.stamp);
    live.steps.push(message.step_ms);
    for (const list of [live.rtt, live.steps]) if (list.length > WINDOW) list.shift();
    const t = (message.first + n) / meta.frame_hz;
    if (plot.view.span < SPAN) plot.setView(0, SPAN);  // as much as there is, up to SPAN
    plot.follow(t);
    plot.setCursor(t);
    plot.requestDraw();
    const last = key => message[key] && message[key][n - 1];
    const next = last('p_future') || last('p_now');
    $('next-a').style.width = `${(100 * next[0]).toFixed(1)}%`;
    for (const [key, id] of [['vad', 'vad'], ['p_bc', 'bc']]) {
      if (!last(key)) continue;
      $(`${id}-a`).value = last(key)[0];
      $(`${id}-b`).value = last(key)[1];
    }
    const f = key => last(key) ? `${key} A ${last(key)[0].toFixed(2)} B ${last(key)[1].toFixed(2)}`
                               : '';
    $('readout').textContent = [f('p_future') || f('p_now'), f('vad'), f('p_bc')].join(' · ');
    const rtt = live.rtt.length ? `round trip ${ms(live.rtt.at(-1))} (median ` +
      `${ms(percentile(live.rtt, 0.5))}, p99 ${ms(percentile(live.rtt, 0.99))})` : '';
    $('status').textContent = [clock(t, 0.1), rtt,
      `model step ${ms(percentile(live.steps, 0.5))} (median)`,
      `queued ${ms(message.wait_ms)}`, `dropped ${message.dropped_s.toFixed(2)} s`]
      .filter(Boolean).join(' · ');
  }

  function connect(start, onReady) {
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    const ws = new WebSocket(`${scheme}://${location.host}/ws`);
    ws.binaryType = 'arraybuffer';
    ws.onopen = () => ws.send(JSON.stringify(start));
    ws.onmessage = e => {
      const message = JSON.parse(e.data);
      if (message.type === 'frames') onFrames(message);
      else if (message.type === 'ready') {
        $('status').textContent = `streaming: ${message.describe}`;
        onReady();
      } else if (message.type === 'notice') notice(message.text);
      else if (message.type === 'done') {
        live.done = message;
        if (message.written.length) notice(`written: ${message.written.join(', ')}`);
      }
    };
    ws.onclose = e => {
      live.closed = {code: e.code, reason: e.reason};
      if (e.code !== 1000) notice(`the server closed the stream: ${e.code} ${e.reason}`);
      finish();
    };
    return ws;
  }

  // Speaker B's choices: silence, A's second channel, another input, or a partner recording.
  async function listInputs() {
    const devices = navigator.mediaDevices ? await navigator.mediaDevices.enumerateDevices() : [];
    const inputs = devices.filter(d => d.kind === 'audioinput');
    const option = (value, text) => new Option(text, value);
    const a = $('input-a'), b = $('input-b'), keepA = a.value, keepB = b.value;
    const name = (d, i) => d.label || `microphone ${i + 1}`;
    a.replaceChildren(...inputs.map((d, i) => option(d.deviceId, name(d, i))));
    if (!inputs.length) a.append(option('', 'default microphone'));
    b.replaceChildren(option('silence', 'silence'),
      ...meta.recordings.map(r => option(`partner:${r.name}`,
                                         `partner recording: ${r.name} (${clock(r.seconds, 1)})`)),
      option('right', "A's second channel"),
      ...inputs.map((d, i) => option(`device:${d.deviceId}`, `input: ${name(d, i)}`)));
    if (keepA) a.value = keepA;
    if (keepB) b.value = keepB;
    $('file').replaceChildren(...meta.recordings.filter(r => r.channels === 2).map(
      r => option(r.name, `${r.name} (${clock(r.seconds, 1)})`)));
    $('start-file').disabled = !$('file').options.length;
  }

  async function microphone(id) {
    return navigator.mediaDevices.getUserMedia({audio: {
      deviceId: id ? {exact: id} : undefined, echoCancellation: true, noiseSuppression: false,
      autoGainControl: false}});
  }

  // An AudioContext at the model's rate where the browser resamples the microphone into one;
  // else at its own rate, which the server resamples.
  async function captureGraph(streams, channels) {
    for (const options of [{sampleRate: meta.sample_rate}, {}]) {
      const context = new AudioContext(options);
      try {
        const sources = streams.map(s => context.createMediaStreamSource(s));
        await context.audioWorklet.addModule('/capture.js');
        const node = new AudioWorkletNode(context, 'convssl-capture', {
          channelCount: channels, channelCountMode: 'explicit', channelInterpretation: 'speakers',
          processorOptions: {channels, block: Math.round(context.sampleRate / meta.frame_hz)}});
        if (channels === 1) sources[0].connect(node);
        else {
          const merger = context.createChannelMerger(2);
          if (sources.length === 2) {
            sources[0].connect(merger, 0, 0);
            sources[1].connect(merger, 0, 1);
          } else {
            const splitter = context.createChannelSplitter(2);
            sources[0].connect(splitter);
            splitter.connect(merger, 0, 0);
            splitter.connect(merger, 1, 1);
          }
          merger.connect(node);
        }
        const mute = context.createGain();  // keeps the node pulled without playing the input
        mute.gain.value = 0;
        node.connect(mute).connect(context.destination);
        return {context, node};
      } catch (err) {
        await context.close();
        if (!options.sampleRate) throw err;
      }
    }
  }

  function play(name) {
    const audio = new Audio(`/recording/${encodeURIComponent(name)}`);
    audio.play().catch(err => notice(`cannot play ${name} here (${err.message}); the model still ` +
                                     'hears it'));
    return audio;
  }

  async function startMicrophone() {
    if (!navigator.mediaDevices) {
      notice('This browser gives no microphone to this page: open it as http://127.0.0.1 or ' +
             'localhost (or over https).');
      return;
    }
    const choiceB = $('input-b').value;
    const streams = [await microphone($('input-a').value)];
    if (choiceB.startsWith('device:')) streams.push(await microphone(choiceB.slice(7)));
    const channels = choiceB === 'right' || choiceB.startsWith('device:') ? 2 : 1;
    const partner = choiceB.startsWith('partner:') ? choiceB.slice(8) : null;
    const {context, node} = await captureGraph(streams, channels);
    begin();
    session = {context, streams, node};
    session.ws = connect({type: 'start', rate: context.sampleRate, channels, partner}, () => {
      if (partner) session.audio = play(partner);
      node.port.onmessage = e => {
        if (session.ws.readyState !== WebSocket.OPEN) return;
        const message = new ArrayBuffer(8 + e.data.byteLength);
        new DataView(message).setFloat64(0, performance.now(), true);
        new Int16Array(message, 8).set(e.data);
        session.ws.send(message);
      };
    });
    listInputs();  // the devices' names, now that the page may see them
  }

  function startFile() {
    const name = $('file').value;
    begin();
    session = {streams: []};
    session.ws = connect({type: 'start', file: name}, () => { session.audio = play(name); });
  }

  function begin() {
    for (const s of Object.values(series)) s.clear();  // a new session starts a new plot
    plot.setView(0, SPAN);
    live.frames = {};
    live.rtt.length = live.steps.length = 0;
    $('start').disabled = $('start-file').disabled = true;
    $('stop').disabled = false;
    $('notice').hidden = true;
    live.done = live.closed = null;
  }

  function stop() {
    if (!session) return;
    if (session.ws.readyState === WebSocket.OPEN) session.ws.send(JSON.stringify({type: 'stop'}));
    release();
  }

  // Microphones, audio graph and playback let go (the socket closes once the server is done).
  function release() {
    if (!session || session.released) return;
    session.released = true;
    if (session.node) session.node.port.postMessage('stop');
    for (const stream of session.streams) for (const track of stream.getTracks()) track.stop();
    if (session.context) session.context.close();
    if (session.audio) session.audio.pause();
    $('stop').disabled = true;
  }

  function finish() {
    release();
    session = null;
    $('start').disabled = false;
    $('start-file').disabled = !$('file').options.length;
  }

  const guard = action => () => action().catch(err => {
    notice(`cannot start: ${err.message}`);
    if (session) stop(); else finish();
  });
  $('start').addEventListener('click', guard(startMicrophone));
  $('start-file').addEventListener('click', guard(async () => startFile()));
  $('stop').addEventListener('click', stop);
  listInputs().then(() => { live.ready = true; });
})();
