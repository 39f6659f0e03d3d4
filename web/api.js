// Small fetch helpers for Morpheus's own endpoints (same origin); errors carry the server's
// OpenAI-style message ({"error": {message, type, param, code}}).

export class ApiError extends Error {
  constructor(status, body) {
    const error = body && body.error ? body.error : {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code ?? null;
    this.param = error.param ?? null;
  }
}

let pageKey = null; // the key typed into the page: sent with every call and WebSocket

/** Use `key` (the server's API key or its admin key) from now on; null sends none. */
export function setKey(key) {
  pageKey = key || null;
}

/** WebSocket subprotocols that carry the key (a browser's WebSocket cannot send headers). */
export function keyProtocols() {
  return pageKey ? ["realtime", `openai-insecure-api-key.${pageKey}`] : [];
}

export async function call(path, { method = "GET", json, body, headers = {} } = {}) {
  const init = { method, headers: { ...headers } };
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    init.headers["Content-Type"] = "application/json";
  } else if (body !== undefined) {
    init.body = body;
  }
  if (pageKey) init.headers.Authorization = `Bearer ${pageKey}`;
  const response = await fetch(path, init);
  const type = response.headers.get("content-type") || "";
  if (!response.ok) {
    const payload = type.includes("json") ? await response.json().catch(() => null) : null;
    throw new ApiError(response.status, payload);
  }
  return type.includes("json") ? response.json() : response;
}

/** What the pickers and panels need, fetched together. */
export async function serverState() {
  const [voices, adapters, plugins, config] = await Promise.all([
    call("/v1/audio/voices"), call("/adapters"), call("/plugins"), call("/config"),
  ]);
  return { voices, adapters, plugins, config };
}

/** The trace UI link for `traceId`: `{trace_id}` in the template, else Jaeger's /trace/<id>. */
export function traceLink(template, traceId) {
  if (!template || !traceId) return null;
  if (template.includes("{trace_id}")) return template.replaceAll("{trace_id}", traceId);
  return `${template.replace(/\/+$/, "")}/trace/${traceId}`;
}
