// The plugin manager (GET/POST /plugins, DELETE /plugins/{name}) and the voice upload form
// (POST /v1/audio/voices, shown only while a loaded engine clones voices).

import { call, setKey } from "./api.js";

const $ = (id) => document.getElementById(id);
const KEY_STORAGE = "morpheus.adminKey";
const unloadedHere = new Map(); // plugins this page unloaded: shown as "unloaded" until reloaded

function say(id, message, isError = false) {
  const node = $(id);
  node.textContent = message;
  node.classList.toggle("error", isError);
}

function healthText(plugin) {
  if (plugin.state !== "loaded") return "–";
  const engines = Object.entries(plugin.health.engines || {});
  if (engines.length === 0) return plugin.health.ready ? "ready" : "not ready";
  return engines.map(([name, h]) => `${name}: ${h.ready ? "ready" : "not ready"}`).join(", ");
}

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text ?? "–";
  if (className) td.className = className;
  row.append(td);
  return td;
}

/** Fill the plugin table from GET /plugins. */
export function renderPlugins(plugins, onChange) {
  const body = $("plugins-body");
  body.replaceChildren();
  for (const plugin of plugins) unloadedHere.delete(plugin.name);
  const gone = [...unloadedHere.values()].map((p) => ({ ...p, state: "unloaded", error: null }));
  for (const plugin of [...plugins, ...gone]) {
    const row = document.createElement("tr");
    row.dataset.plugin = plugin.name;
    const th = document.createElement("th");
    th.scope = "row";
    th.textContent = plugin.name;
    row.append(th);
    cell(row, plugin.kind, "col-kind");
    const state = cell(row, plugin.state, `state-${plugin.state}`);
    state.dataset.role = "state";
    if (plugin.error) {
      const error = document.createElement("span");
      error.className = "error";
      error.textContent = plugin.error;
      state.append(error);
    }
    cell(row, healthText(plugin));
    cell(row, plugin.version, "col-version");
    const action = document.createElement("td");
    if (plugin.state === "loaded") {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = "Unload";
      button.setAttribute("aria-label", `Unload ${plugin.name}`);
      button.addEventListener("click", () => unload(plugin, onChange));
      action.append(button);
    } else if (plugin.state === "unloaded" && plugin.module) {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = "Load again…";
      button.setAttribute("aria-label", `Load ${plugin.name} again`);
      button.addEventListener("click", () => {
        const form = $("plugin-load");
        form.elements.name.value = plugin.name;
        form.elements.module.value = plugin.module;
        form.elements.settings.focus();
      });
      action.append(button);
    }
    row.append(action);
    body.append(row);
  }
}

async function unload(plugin, onChange) {
  const { name } = plugin;
  say("plugins-status", `Unloading ${name}…`);
  try {
    await call(`/plugins/${encodeURIComponent(name)}`, { method: "DELETE" });
    unloadedHere.set(name, plugin);
    say("plugins-status", `Unloaded ${name}.`);
  } catch (error) {
    say("plugins-status", `Could not unload ${name}: ${error.message}`, true);
  }
  await onChange();
}

async function load(form, onChange) {
  const data = new FormData(form);
  let settings;
  try {
    settings = JSON.parse(data.get("settings") || "{}");
  } catch {
    say("plugins-status", "Settings must be a JSON object, e.g. {} or {\"voice\": \"bundled\"}.", true);
    return;
  }
  const name = data.get("name");
  say("plugins-status", `Loading ${name}…`);
  try {
    const json = { name, module: data.get("module"), settings };
    const plugin = await call("/plugins", { method: "POST", json });
    say("plugins-status", `Loaded ${plugin.name}: ${plugin.state}.`);
  } catch (error) {
    say("plugins-status", `Could not load ${name}: ${error.message}`, true);
  }
  await onChange();
}

/** Show the upload form only while a loaded engine reports `voice_cloning`. */
export function renderVoices(adapters) {
  const cloning = adapters.filter((a) => a.capabilities && a.capabilities.voice_cloning);
  $("voices-card").hidden = cloning.length === 0;
  $("cloning-engines").textContent = cloning.map((a) => a.name).join(", ");
}

async function upload(form, onChange) {
  const data = new FormData(form);
  say("voices-status", `Uploading ${data.get("name")}…`);
  try {
    await call("/v1/audio/voices", { method: "POST", body: data });
    say("voices-status", `Uploaded voice ${data.get("name")}.`);
    form.reset();
  } catch (error) {
    say("voices-status", `Upload failed: ${error.message}`, true);
  }
  await onChange();
}

export function describeAdmin(config) {
  $("admin-help").textContent = config.admin_key_set
    ? "The server has an admin key: loading and unloading need it. Every request sends this key."
    : "The server has no admin key: loading and unloading are open. Every request sends this key.";
}

export function setUpAdmin(onChange) {
  const key = $("admin-key");
  key.value = sessionStorage.getItem(KEY_STORAGE) || "";
  setKey(key.value.trim());
  const keep = () => {
    sessionStorage.setItem(KEY_STORAGE, key.value);
    setKey(key.value.trim());
    onChange(); // a server that refused the page may answer now
  };
  key.addEventListener("input", () => setKey(key.value.trim()));
  key.addEventListener("change", keep);
  $("admin-form").addEventListener("submit", (event) => {
    event.preventDefault();
    keep();
  });
  $("plugin-load").addEventListener("submit", (event) => {
    event.preventDefault();
    load(event.currentTarget, onChange);
  });
  $("voice-upload").addEventListener("submit", (event) => {
    event.preventDefault();
    upload(event.currentTarget, onChange);
  });
}
