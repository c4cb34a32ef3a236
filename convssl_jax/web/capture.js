// The live page's capture (an AudioWorklet, convssl_jax/serve.py serves it): the input's channels
// as int16 (x * 32768, rounded, clipped), interleaved, posted to the page in blocks of
// `processorOptions.block` sample frames. An input with no channels yet counts as silence.
class ConvsslCapture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.channels = options.processorOptions.channels;
    this.block = options.processorOptions.block;
    this.buffer = new Int16Array(this.block * this.channels);
    this.filled = 0;
    this.running = true;
    this.port.onmessage = e => { if (e.data === 'stop') this.running = false; };
  }

  process(inputs) {
    const input = inputs[0];
    const n = input.length ? input[0].length : 128;
    for (let i = 0; i < n; i++) {
      for (let c = 0; c < this.channels; c++) {
        const x = input[c] ? input[c][i] : 0;
        this.buffer[this.filled * this.channels + c] =
          Math.max(-32768, Math.min(32767, Math.round(x * 32768)));
      }
      if (++this.filled === this.block) {
        this.port.postMessage(this.buffer, [this.buffer.buffer]);
        this.buffer = new Int16Array(this.block * this.channels);
        this.filled = 0;
      }
    }
    return this.running;
  }
}

registerProcessor('convssl-capture', ConvsslCapture);
