// The AudioWorkletProcessor that plays streamed PCM: a growable ring buffer of float32 samples
// at the AudioContext's rate, a small jitter buffer before (re)starting (grown x1.5 after each
// underflow, up to MAX_JITTER_MS), underflow counting and a short fade on stop. The main thread talks to it through its port (see player.js).
//
// Messages in:  {type: "push", samples: Float32Array, generation}  audio to play
//               {type: "end", generation}    no more audio for now: drain without an underflow
//               {type: "stop", generation, fadeMs}  fade out over fadeMs, then drop the rest;
//                                            pushes of this generation or older are ignored
//               {type: "config", jitterMs}  the jitter buffer to start with
// Messages out: {type: "stats", ...} every ~50 ms while anything changes, and once on each
//               state change ("started", "drained", "stopped").

const STATS_EVERY_QUANTA = 16; // 16 x 128 samples: ~85 ms at 24 kHz
const MAX_JITTER_MS = 300;

class PcmPlayer extends AudioWorkletProcessor {
  constructor() {
    super();
    this.ring = new Float32Array(1 << 16);
    this.readIndex = 0; // absolute sample counters; index into ring with & (length - 1)
    this.writeIndex = 0;
    this.generation = 0;
    this.stoppedGeneration = -1;
    this.jitterSamples = Math.round(0.06 * sampleRate);
    this.playing = false; // false while waiting for the jitter buffer to fill
    this.ended = false; // the producer said no more audio is coming
    this.fadeLeft = 0; // samples of fade still to render after a stop
    this.fadeTotal = 0;
    this.rendered = 0; // samples of audio actually rendered (silence padding not counted)
    this.renderedSinceStop = 0;
    this.underflows = 0;
    this.quanta = 0;
    this.lastReported = -1;
    this.port.onmessage = (event) => this.receive(event.data);
  }

  get buffered() {
    return this.writeIndex - this.readIndex;
  }

  receive(message) {
    if (message.type === "push") {
      if (message.generation <= this.stoppedGeneration || message.generation < this.generation) {
        return;
      }
      if (message.generation > this.generation) this.reset(message.generation);
      this.write(message.samples);
      this.ended = false;
    } else if (message.type === "end") {
      if (message.generation === this.generation) this.ended = true;
    } else if (message.type === "stop") {
      const fade = Math.min(this.buffered, Math.round((message.fadeMs / 1000) * sampleRate));
      this.stoppedGeneration = Math.max(this.stoppedGeneration, message.generation);
      // Keep only the fade's worth of audio; the rest is never heard.
      this.writeIndex = this.readIndex + (this.playing ? fade : 0);
      this.fadeLeft = this.fadeTotal = this.playing ? fade : 0;
      this.renderedSinceStop = 0;
      this.ended = true;
      this.report("stopping");
    } else if (message.type === "config") {
      this.jitterSamples = Math.round((message.jitterMs / 1000) * sampleRate);
    }
  }

  reset(generation) {
    this.generation = generation;
    this.readIndex = this.writeIndex = 0;
    this.playing = false;
    this.fadeLeft = this.fadeTotal = 0;
  }

  write(samples) {
    const needed = this.buffered + samples.length;
    if (needed > this.ring.length) this.grow(needed);
    const mask = this.ring.length - 1;
    for (let i = 0; i < samples.length; i++) this.ring[(this.writeIndex + i) & mask] = samples[i];
    this.writeIndex += samples.length;
  }

  grow(needed) {
    let size = this.ring.length;
    while (size < needed) size *= 2;
    const bigger = new Float32Array(size);
    const mask = this.ring.length - 1;
    for (let i = this.readIndex; i < this.writeIndex; i++) bigger[i & (size - 1)] = this.ring[i & mask];
    this.ring = bigger;
  }

  process(_inputs, outputs) {
    const out = outputs[0][0];
    if (!out) return true;
    if (!this.playing && this.buffered > 0 && (this.buffered >= this.jitterSamples || this.ended)) {
      this.playing = true;
      this.report("started");
    }
    let count = 0;
    if (this.playing) {
      const mask = this.ring.length - 1;
      count = Math.min(out.length, this.buffered);
      for (let i = 0; i < count; i++) {
        let sample = this.ring[(this.readIndex + i) & mask];
        if (this.fadeTotal > 0) sample *= (this.fadeLeft - i) / this.fadeTotal;
        out[i] = sample;
      }
      this.readIndex += count;
      this.rendered += count;
      this.renderedSinceStop += count;
      if (this.fadeTotal > 0) this.fadeLeft = Math.max(0, this.fadeLeft - count);
    }
    out.fill(0, count);
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
    if (this.playing && this.buffered === 0) {
      this.playing = false;
      if (this.fadeTotal > 0) {
        this.fadeTotal = 0;
        this.report("stopped");
      } else if (this.ended) {
        this.report("drained");
      } else {
        // Ran dry while more audio was due: hold more before playing on, so it happens less.
        this.underflows += 1;
        this.jitterSamples = Math.min(
          Math.round((MAX_JITTER_MS / 1000) * sampleRate), Math.round(this.jitterSamples * 1.5),
        );
        this.report("underflow");
      }
    }
    if (++this.quanta % STATS_EVERY_QUANTA === 0 && this.rendered + this.buffered !== this.lastReported) {
      this.lastReported = this.rendered + this.buffered;
      this.report("tick");
    }
    return true;
  }

  report(state) {
    this.port.postMessage({
      type: "stats",
      state,
      generation: this.generation,
      rendered: this.rendered,
      renderedSinceStop: this.renderedSinceStop,
      bufferedSamples: this.buffered,
      underflows: this.underflows,
      jitterMs: (1000 * this.jitterSamples) / sampleRate,
      playing: this.playing,
      sampleRate,
      time: currentTime,
    });
  }
}

registerProcessor("morpheus-pcm-player", PcmPlayer);
