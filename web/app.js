// The Morpheus playground: speak over a realtime session, stop (barge in), speak as you type,
// watch the performance panel, replay history, manage plugins. Plain ES modules, no build step.

import { call, serverState, traceLink } from "./api.js";
import { describeAdmin, renderPlugins, renderVoices, setUpAdmin } from "./admin.js";
import { drawChunks, drawWaveform } from "./charts.js";
import {
  addUtterance, clearUtterances, concat, deleteUtterance, listUtterances, toFloat32, wavBlob,
} from "./history.js";
import { Player } from "./player.js";
import { RealtimeSession } from "./session.js";

const $ = (id) => document.getElementById(id);
const reduceMotion = matchMedia("(prefers-reduced-motion: reduce)");
const player = new Player();
const ui = {
  server: null, session: null, opening: null, typedSent: "", sendChain: Promise.resolve(),
  shown: null, underflowBase: 0, waveSamples: null, wavePlayedBase: 0,
};
window.morpheus = { player, ui }; // read by the browser tests and handy in the console

function status(message, isError = false) {
  $("status").textContent = message;
  $("status").classList.toggle("error", isError);
}

function settings() {
  return { engine: $("engine").value, voice: $("voice").value, speed: Number($("speed").value) };
}

// -- server state: pickers, plugins, voices --------------------------------------------------

function fillSelect(select, options, chosen) {
  select.replaceChildren(...options.map(({ value, label }) => new Option(label, value)));
  if (options.some((o) => o.value === chosen)) select.value = chosen;
}

function fillVoices() {
  const engines = ui.server ? ui.server.voices.engines : [];
  const engine = engines.find((e) => e.name === $("engine").value);
  const voices = engine ? engine.voices : [];
  const previous = $("voice").value;
  fillSelect($("voice"), voices.map((v) => ({ value: v, label: v })),
    voices.includes(previous) ? previous : engine && engine.default_voice);
}

async function refresh() {
  try {
    ui.server = await serverState();
  } catch (error) {
    const hint = error.status === 401 ? " Enter the server's key under Plugins." : "";
    status(`Could not read the server's state: ${error.message}${hint}`, true);
    return;
  }
  const { voices, adapters, plugins, config } = ui.server;
  const engines = voices.engines.map((e) => ({ value: e.name, label: e.default ? `${e.name} (default)` : e.name }));
  const chosen = $("engine").value || voices.default_engine;
  fillSelect($("engine"), engines, chosen);
  fillVoices();
  renderPlugins(plugins.plugins, refresh);
  renderVoices(adapters.adapters);
  describeAdmin(config);
  $("speak").disabled = $("download-server").disabled = engines.length === 0;
  if (engines.length === 0) status("No engine is loaded: load one under Plugins.", true);
}

// -- the realtime session --------------------------------------------------------------------

async function session() {
  const wanted = settings();
  if (ui.session && ui.session.isOpen && ui.session.matches(wanted)) return ui.session;
  if (ui.opening) return ui.opening;
  if (ui.session) ui.session.close();
  const next = new RealtimeSession(wanted);
  next.addEventListener("audio", ({ detail }) => onAudio(detail));
  next.addEventListener("turn", ({ detail }) => onTurn(detail));
  next.addEventListener("metrics", ({ detail }) => onMetrics(detail.turn, detail.metrics));
  next.addEventListener("degraded", ({ detail }) => {
    $("m-degraded").textContent = `degraded: ${detail.from_engine} → ${detail.engine}`;
    $("m-degraded").className = "degraded";
  });
  next.addEventListener("problem", ({ detail }) => status(detail.message, true));
  next.addEventListener("close", ({ detail }) => {
    if (ui.session === next) ui.session = null;
    if (detail.code !== 1000 && detail.reason) status(`Session closed: ${detail.reason}`, true);
  });
  ui.opening = (async () => {
    const info = await next.open();
    await player.ensure(info.sample_rate);
    ui.session = next;
    return next;
  })();
  try {
    return await ui.opening;
  } finally {
    ui.opening = null;
  }
}

/** Send a text delta in order with the others (the first one may wait for the socket). */
function send(text, final) {
  ui.sendChain = ui.sendChain.then(async () => {
    try {
      (await session()).sendText(text, final);
    } catch (error) {
      status(error.message, true);
    }
  });
  return ui.sendChain;
}

/** Start the audio output inside the user's gesture (iOS plays nothing otherwise). */
function unlockAudio() {
  const rate = ui.server ? ui.server.config.sample_rate : 24000;
  player.ensure(rate).catch((error) => status(`Audio output failed: ${error.message}`, true));
}

async function speak() {
  unlockAudio();
  const text = $("text").value;
  if ($("type-mode").checked) {
    const rest = text.slice(ui.typedSent.length);
    if (!rest.trim() && !(ui.session && ui.session.turnOpen)) return; // nothing to end
    await send(rest, true); // the words not sent yet end the turn
    ui.typedSent = text;
    return;
  }
  if (!text.trim()) {
    status("Type some text to speak first.", true);
    return;
  }
  stop(false);
  status("Speaking…");
  await send(text, true);
}

function stop(announce = true) {
  if (ui.session) ui.session.bargeIn();
  player.stop();
  ui.typedSent = $("text").value; // speak-as-you-type carries on after what is there now
  if (announce) status("Stopped.");
}

function onTyped() {
  if (!$("type-mode").checked) return;
  const text = $("text").value;
  if (!text.startsWith(ui.typedSent)) {
    ui.typedSent = text.slice(0, text.search(/\S*$/)); // edited behind: don't resend old words
    return;
  }
  const pending = text.slice(ui.typedSent.length);
  const end = pending.search(/\s\S*$/);
  if (end < 0) return; // the word being typed is not finished
  const words = pending.slice(0, end + 1);
  unlockAudio();
  ui.typedSent += words;
  send(words, false);
}

// -- what the session tells us ---------------------------------------------------------------

function showTurn(turn) {
  ui.shown = turn;
  ui.underflowBase = player.stats.underflows;
  ui.wavePlayedBase = player.stats.rendered;
  for (const id of ["m-ttfa", "m-heard", "m-rtf", "m-server-underflows", "m-trace"]) {
    $(id).textContent = "–";
  }
  $("m-degraded").textContent = "normal";
  $("m-degraded").className = "";
  $("m-engine").textContent = ui.session ? ui.session.session.engine : "–";
}

function onAudio({ turn }) {
  if (ui.shown !== turn) showTurn(turn);
  player.push(turn.samples[turn.samples.length - 1]);
  if (turn.samples.length === 1) $("m-heard").textContent = Math.round(turn.firstAudioAt - turn.sentAt);
  $("m-chunks").textContent = turn.chunks.length;
  drawChunks($("chunks-chart"), turn.chunks);
  $("chunks-caption").textContent = `Chunk size per chunk received: ${turn.chunks.length} chunks, ` +
    `last ${Math.round(turn.chunks[turn.chunks.length - 1])} ms`;
  ui.waveSamples = null; // rebuilt lazily from the turn's chunks
}

function onTurn(turn) {
  if (turn.state === "speaking" && ui.shown !== turn) showTurn(turn);
  if (turn.state === "done" && ui.shown === turn) player.end();
  if (turn.state === "interrupted" && turn.samples.length && !turn.saved) save(turn, true);
  if (turn.state === "failed") status(`Turn ${turn.index} failed: ${turn.error.message}`, true);
}

function onMetrics(turn, metrics) {
  const ttfa = metrics.time_to_first_audio_ms;
  $("m-ttfa").textContent = ttfa === null ? "–" : Math.round(ttfa);
  $("m-rtf").textContent = metrics.real_time_factor === null ? "–" : metrics.real_time_factor.toFixed(2);
  $("m-engine").textContent = metrics.engine;
  $("m-server-underflows").textContent = metrics.underflows;
  $("m-degraded").textContent = metrics.degraded ? `degraded (${metrics.engine} spoke)` : "normal";
  $("m-degraded").className = metrics.degraded ? "degraded" : "";
  showTrace(metrics.trace_id);
  status(`Spoke ${(metrics.audio_ms / 1000).toFixed(1)} s of audio.`);
  if (!turn.saved) save(turn, false);
}

function showTrace(traceId) {
  const node = $("m-trace");
  node.replaceChildren();
  if (!traceId) {
    node.textContent = "– (tracing off)";
    return;
  }
  const href = traceLink(ui.server && ui.server.config.tracing_ui_url, traceId);
  if (!href) {
    node.textContent = traceId;
    return;
  }
  const link = Object.assign(document.createElement("a"), { href, textContent: traceId });
  link.target = "_blank";
  link.rel = "noopener";
  node.append(link);
}

player.addEventListener("stats", ({ detail }) => {
  $("m-buffer").textContent = Math.round(player.bufferedMs);
  $("m-jitter").textContent = Math.round(detail.jitterMs);
  $("m-underflows").textContent = detail.underflows - ui.underflowBase;
  const settled = ["drained", "stopped", "stopping"].includes(detail.state);
  if (reduceMotion.matches && !settled) return; // no moving playhead: redraw when it ends
  const turn = ui.shown;
  if (!ui.waveSamples && turn) ui.waveSamples = concat(turn.samples);
  drawWaveform($("waveform"), ui.waveSamples, detail.rendered - ui.wavePlayedBase);
});

// -- history ---------------------------------------------------------------------------------

async function save(turn, interrupted) {
  turn.saved = true;
  const samples = concat(turn.samples);
  if (samples.length === 0) return;
  const s = ui.session ? ui.session.settings : settings();
  try {
    await addUtterance({
      text: turn.text.trim(), engine: turn.metrics ? turn.metrics.engine : s.engine, voice: s.voice,
      speed: s.speed, sampleRate: turn.sampleRate, samples, interrupted,
      ttfaMs: turn.metrics ? turn.metrics.time_to_first_audio_ms : null,
    });
  } catch (error) {
    status(`Could not keep it in the history: ${error.message}`, true);
  }
  await renderHistory();
}

function button(label, text, onClick) {
  const b = Object.assign(document.createElement("button"), { type: "button", textContent: text });
  b.setAttribute("aria-label", label);
  b.addEventListener("click", onClick);
  return b;
}

async function renderHistory() {
  let entries = [];
  try {
    entries = await listUtterances();
  } catch (error) {
    status(`History unavailable: ${error.message}`, true);
  }
  const list = $("history-list");
  list.replaceChildren(...entries.map((entry) => {
    const li = document.createElement("li");
    const pcm = new Int16Array(entry.pcm);
    const seconds = pcm.length / entry.sampleRate;
    const text = Object.assign(document.createElement("span"), { className: "text", textContent: entry.text || "(no text)" });
    const meta = document.createElement("span");
    meta.className = "meta";
    meta.textContent = `${entry.engine}/${entry.voice} · ${seconds.toFixed(1)} s` +
      (entry.ttfaMs != null ? ` · first audio ${Math.round(entry.ttfaMs)} ms` : "") +
      (entry.interrupted ? " · stopped" : "") + ` · ${new Date(entry.createdAt).toLocaleTimeString()}`;
    const name = `utterance ${entry.id}`;
    const actions = document.createElement("span");
    actions.className = "actions";
    actions.append(
      button(`Replay ${name}`, "Replay", () => replay(entry)),
      button(`Download ${name} as WAV`, "WAV", () => download(wavBlob(pcm, entry.sampleRate), `morpheus-${entry.id}.wav`)),
      button(`Delete ${name}`, "Delete", async () => { await deleteUtterance(entry.id); renderHistory(); }));
    li.append(text, meta, actions);
    return li;
  }));
}

async function replay(entry) {
  stop(false);
  unlockAudio();
  const samples = toFloat32(new Int16Array(entry.pcm));
  await player.ensure(entry.sampleRate);
  ui.shown = null;
  ui.waveSamples = samples;
  ui.wavePlayedBase = player.stats.rendered;
  const step = Math.round(entry.sampleRate / 10);
  for (let i = 0; i < samples.length; i += step) player.push(samples.subarray(i, i + step));
  player.end();
  status(`Replaying utterance ${entry.id}.`);
}

function download(blob, filename) {
  const url = URL.createObjectURL(blob);
  const a = Object.assign(document.createElement("a"), { href: url, download: filename });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

async function downloadFromServer() {
  const { engine, voice, speed } = settings();
  const format = $("format").value;
  const input = $("text").value;
  status(`Asking the server for ${format}…`);
  try {
    const response = await call("/v1/audio/speech", {
      method: "POST", json: { model: engine, voice, speed, input, response_format: format },
    });
    download(await response.blob(), `morpheus.${format}`);
    status(`Downloaded morpheus.${format}.`);
  } catch (error) {
    status(`Download failed: ${error.message}`, true);
  }
}

// -- wiring ----------------------------------------------------------------------------------

$("speak").addEventListener("click", speak);
$("stop").addEventListener("click", () => stop());
$("download-server").addEventListener("click", downloadFromServer);
$("engine").addEventListener("change", fillVoices);
$("text").addEventListener("input", onTyped);
$("text").addEventListener("keydown", (event) => {
  const typeMode = $("type-mode").checked;
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey || (typeMode && !event.shiftKey))) {
    event.preventDefault();
    speak();
  }
});
$("type-mode").addEventListener("change", () => {
  ui.typedSent = $("type-mode").checked ? "" : ui.typedSent;
  if ($("type-mode").checked) $("text").value = "";
  $("text").focus();
  status($("type-mode").checked ? "Type: each finished word is sent; Enter ends the turn." : "");
});
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape") stop();
});
$("history-clear").addEventListener("click", async () => {
  await clearUtterances();
  renderHistory();
});
setUpAdmin(refresh);
refresh();
renderHistory();
