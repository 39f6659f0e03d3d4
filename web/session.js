// A realtime session over `/v1/realtime` (docs/sessions.md): JSON control messages both ways,
// audio as binary PCM0 frames (float32). It sorts frames into turns and drops every frame of a
// generation this client barged in on, so no old audio can reach the player after Stop.

import { keyProtocols } from "./api.js";

/** Parse MLX-Audio's PCM0 frame: "PCM0" | u32 rate | u32 samples | u32 channels | f32 LE. */
export function parsePcm0(buffer) {
  const view = new DataView(buffer);
  const magic = String.fromCharCode(...new Uint8Array(buffer, 0, 4));
  if (magic !== "PCM0") throw new Error(`not a PCM0 frame: ${magic}`);
  const sampleRate = view.getUint32(4, true);
  const count = view.getUint32(8, true);
  const channels = view.getUint32(12, true);
  const all = new Float32Array(buffer.slice(16, 16 + 4 * count * channels));
  if (channels === 1) return { sampleRate, samples: all };
  const mono = new Float32Array(count);
  for (let i = 0; i < count; i++) mono[i] = all[i * channels];
  return { sampleRate, samples: mono };
}

/**
 * Events dispatched: "open" (detail: session), "turn" (detail: turn record, on every change),
 * "audio" (detail: {turn, samples, sampleRate}), "metrics", "degraded", "problem"
 * (detail: {message, code}), "close" (detail: {code, reason}).
 */
export class RealtimeSession extends EventTarget {
  constructor({ engine, voice, speed }) {
    super();
    this.settings = { engine, voice, speed };
    this.ws = null;
    this.session = null;
    this.generation = 0; // the server's generation as this client knows it
    this.droppedThrough = -1; // frames of turns of this generation or older are dropped
    this.currentTurn = null; // the turn whose frames arrive now (after its turn.started)
    this.turns = new Map(); // index -> turn record
    this.turnOpen = false; // a turn is taking text (no `final` sent yet)
    this.droppedFrames = 0;
    this.sentTexts = []; // texts sent and not yet answered (text.accepted or an error)
  }

  get isOpen() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN && this.session !== null;
  }

  matches({ engine, voice, speed }) {
    const s = this.settings;
    return s.engine === engine && s.voice === voice && Number(s.speed) === Number(speed);
  }

  /** Connect and wait for `session.created`. */
  open() {
    const { engine, voice, speed } = this.settings;
    const query = new URLSearchParams({ speed: String(speed) });
    if (engine) query.set("engine", engine);
    if (voice) query.set("voice", voice);
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${scheme}//${location.host}/v1/realtime?${query}`, keyProtocols());
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    return new Promise((resolve, reject) => {
      let settled = false;
      ws.onmessage = (event) => {
        if (typeof event.data !== "string") return this.onFrame(event.data);
        const message = JSON.parse(event.data);
        if (!settled && message.type === "session.created") {
          settled = true;
          this.session = message.session;
          this.generation = message.session.generation;
          this.emit("open", message.session);
          resolve(message.session);
          return;
        }
        if (!settled && message.type === "error") {
          settled = true;
          reject(new Error(message.error.message));
          return;
        }
        this.onEvent(message);
      };
      ws.onclose = (event) => {
        this.session = null;
        if (!settled) {
          settled = true;
          reject(new Error(event.reason || `WebSocket closed (${event.code})`));
        }
        this.emit("close", { code: event.code, reason: event.reason });
      };
      ws.onerror = () => {}; // onclose follows with the reason
    });
  }

  close() {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify({ type: "close" }));
    }
    this.ws = null;
  }

  /** Push a text delta; `final` ends the turn's text. */
  sendText(text, final = false) {
    if (!this.isOpen) throw new Error("the session is not open");
    this.ws.send(JSON.stringify({ type: "text", text, final }));
    this.sentTexts.push(text);
    if (!this.turnOpen) this.pendingStart = performance.now();
    this.turnOpen = !final;
  }

  /** Stop speaking now: the server cancels, and frames already on the wire are dropped here. */
  bargeIn() {
    if (!this.isOpen) return;
    this.ws.send(JSON.stringify({ type: "barge_in" }));
    this.droppedThrough = this.generation;
    this.generation += 1;
    this.turnOpen = false;
    for (const turn of this.turns.values()) {
      if (turn.state === "queued" || turn.state === "speaking") turn.state = "interrupted";
    }
  }

  turn(index, generation) {
    let turn = this.turns.get(index);
    if (!turn) {
      turn = {
        index, generation, text: "", state: "queued", sentAt: this.pendingStart ?? performance.now(),
        firstAudioAt: null, chunks: [], samples: [], sampleRate: 0, metrics: null,
        degraded: null, error: null,
      };
      this.turns.set(index, turn);
      if (this.turns.size > 20) this.turns.delete(this.turns.keys().next().value);
    }
    return turn;
  }

  onEvent(message) {
    const turn = message.turn ? this.turn(message.turn, message.generation) : null;
    switch (message.type) {
      case "text.accepted":
        turn.text += this.sentTexts.shift() ?? "";
        break;
      case "turn.started":
        this.currentTurn = turn;
        if (turn.generation > this.droppedThrough) turn.state = "speaking";
        break;
      case "turn.done":
        if (turn.state === "speaking") turn.state = "done";
        break;
      case "turn.interrupted":
        turn.state = "interrupted";
        break;
      case "turn.degraded":
        turn.degraded = message;
        this.emit("degraded", message);
        break;
      case "metrics":
        turn.metrics = message;
        this.emit("metrics", { turn, metrics: message });
        break;
      case "error":
        if (!turn) this.sentTexts.shift(); // a refused text (too_many_turns, ...)
        if (turn) {
          turn.error = message;
          turn.state = "failed";
        }
        this.emit("problem", message.error ?? message);
        break;
      case "session.closed":
        this.emit("close", { code: 1000, reason: message.reason });
        return;
      default:
        return;
    }
    if (turn) this.emit("turn", turn);
  }

  onFrame(buffer) {
    const turn = this.currentTurn;
    if (!turn || turn.generation <= this.droppedThrough || turn.state !== "speaking") {
      this.droppedFrames += 1;
      return;
    }
    const { sampleRate, samples } = parsePcm0(buffer);
    if (turn.firstAudioAt === null) turn.firstAudioAt = performance.now();
    turn.sampleRate = sampleRate;
    turn.samples.push(samples);
    turn.chunks.push((1000 * samples.length) / sampleRate);
    this.emit("audio", { turn, samples, sampleRate });
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}
