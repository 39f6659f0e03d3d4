// Gapless playback of streamed PCM: one AudioContext at the stream's sample rate (the browser
// resamples to the device) feeding the "morpheus-pcm-player" AudioWorklet (pcm-worklet.js).
// No MediaSource and no <audio>: chunks are appended to the worklet's ring buffer as they come.

export const STOP_FADE_MS = 10;
export const JITTER_MS = 120; // audio held before playing starts; the worklet grows it on underflow

export class Player extends EventTarget {
  constructor() {
    super();
    this.context = null;
    this.node = null;
    this.generation = 0;
    this.stats = {
      state: "idle", rendered: 0, renderedSinceStop: 0, bufferedSamples: 0, underflows: 0,
      playing: false, sampleRate: 0, generation: 0,
    };
    this.stopEvents = []; // {requestedAt, stoppedAt, renderedSinceStop} for the last stops
  }

  /** Make (or remake) the audio graph at `sampleRate`; call from a user gesture. */
  async ensure(sampleRate) {
    if (this.context && this.context.sampleRate === sampleRate) {
      const resumed = this.context.state === "running" ? null : this.context.resume();
      await this.ready;
      if (resumed) await resumed;
      return;
    }
    if (this.context) this.context.close();
    // Created and resumed before any await: iOS only starts audio inside the user's gesture.
    const context = new AudioContext({ sampleRate, latencyHint: "interactive" });
    const resumed = context.resume();
    this.context = context;
    this.node = null;
    this.ready = (async () => {
      await context.audioWorklet.addModule(new URL("./pcm-worklet.js", import.meta.url));
      await resumed;
    })();
    await this.ready;
    const node = new AudioWorkletNode(context, "morpheus-pcm-player", {
      numberOfInputs: 0, outputChannelCount: [1],
    });
    node.port.onmessage = (event) => this.onStats(event.data);
    node.port.postMessage({ type: "config", jitterMs: JITTER_MS });
    node.connect(context.destination);
    this.node = node;
    this.stats = { ...this.stats, rendered: 0, underflows: 0, sampleRate };
  }

  get sampleRate() {
    return this.context ? this.context.sampleRate : 0;
  }

  /** Queue mono float32 samples of the current generation. */
  push(samples) {
    if (!this.node) return;
    const copy = new Float32Array(samples); // its buffer is handed to the worklet
    this.node.port.postMessage(
      { type: "push", samples: copy, generation: this.generation }, [copy.buffer],
    );
  }

  /** No more audio for now: the buffer drains without counting an underflow. */
  end() {
    if (this.node) this.node.port.postMessage({ type: "end", generation: this.generation });
  }

  /** Fade out what plays over `fadeMs` and drop the rest; later pushes start a new generation. */
  stop(fadeMs = STOP_FADE_MS) {
    if (this.node) {
      this.stopEvents.push({ requestedAt: performance.now(), stoppedAt: null });
      this.stopEvents = this.stopEvents.slice(-10);
      this.node.port.postMessage({ type: "stop", generation: this.generation, fadeMs });
    }
    this.generation += 1;
  }

  get bufferedMs() {
    return this.stats.sampleRate ? (1000 * this.stats.bufferedSamples) / this.stats.sampleRate : 0;
  }

  onStats(stats) {
    this.stats = stats;
    const last = this.stopEvents[this.stopEvents.length - 1];
    const after = ["stopping", "stopped", "drained"].includes(stats.state);
    if (last && last.stoppedAt === null && after && !stats.playing) {
      last.stoppedAt = performance.now();
      last.renderedSinceStop = stats.renderedSinceStop;
    }
    this.dispatchEvent(new CustomEvent("stats", { detail: stats }));
  }
}
