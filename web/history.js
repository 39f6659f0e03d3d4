// This browser's utterances, kept in IndexedDB (database "morpheus", store "utterances"), and
// WAV encoding for their download. Audio is stored as 16-bit PCM to halve the space.

const DB_NAME = "morpheus";
const STORE = "utterances";
export const HISTORY_LIMIT = 50;

function request(req) {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

function openDb() {
  const req = indexedDB.open(DB_NAME, 1);
  req.onupgradeneeded = () => {
    req.result.createObjectStore(STORE, { keyPath: "id", autoIncrement: true });
  };
  return request(req);
}

async function withStore(mode, action) {
  const db = await openDb();
  try {
    const tx = db.transaction(STORE, mode);
    const done = new Promise((resolve, reject) => {
      tx.oncomplete = resolve;
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error);
    });
    const result = await action(tx.objectStore(STORE));
    await done;
    return result;
  } finally {
    db.close();
  }
}

/** Join float32 chunks into one array. */
export function concat(chunks) {
  const total = chunks.reduce((n, c) => n + c.length, 0);
  const out = new Float32Array(total);
  let offset = 0;
  for (const c of chunks) {
    out.set(c, offset);
    offset += c.length;
  }
  return out;
}

export function toInt16(samples) {
  const out = new Int16Array(samples.length);
  for (let i = 0; i < samples.length; i++) {
    const s = Math.max(-1, Math.min(1, samples[i]));
    out[i] = s < 0 ? s * 0x8000 : s * 0x7fff;
  }
  return out;
}

export function toFloat32(int16) {
  const out = new Float32Array(int16.length);
  for (let i = 0; i < int16.length; i++) out[i] = int16[i] / 0x8000;
  return out;
}

/** A 16-bit mono WAV file of `int16` samples. */
export function wavBlob(int16, sampleRate) {
  const header = new ArrayBuffer(44);
  const view = new DataView(header);
  const ascii = (offset, text) => [...text].forEach((ch, i) => view.setUint8(offset + i, ch.charCodeAt(0)));
  const bytes = int16.length * 2;
  ascii(0, "RIFF");
  view.setUint32(4, 36 + bytes, true);
  ascii(8, "WAVE");
  ascii(12, "fmt ");
  view.setUint32(16, 16, true);
  view.setUint16(20, 1, true); // PCM
  view.setUint16(22, 1, true); // mono
  view.setUint32(24, sampleRate, true);
  view.setUint32(28, sampleRate * 2, true);
  view.setUint16(32, 2, true);
  view.setUint16(34, 16, true);
  ascii(36, "data");
  view.setUint32(40, bytes, true);
  return new Blob([header, int16.buffer], { type: "audio/wav" });
}

/** Store an utterance: {text, engine, voice, speed, sampleRate, samples (Float32Array), ...}. */
export async function addUtterance(entry) {
  const { samples, ...rest } = entry;
  const record = { ...rest, createdAt: Date.now(), pcm: toInt16(samples).buffer };
  const id = await withStore("readwrite", (store) => request(store.add(record)));
  await withStore("readwrite", async (store) => {
    const keys = await request(store.getAllKeys());
    for (const key of keys.slice(0, Math.max(0, keys.length - HISTORY_LIMIT))) store.delete(key);
  });
  return id;
}

/** All stored utterances, newest first. */
export async function listUtterances() {
  const all = await withStore("readonly", (store) => request(store.getAll()));
  return all.reverse();
}

export function deleteUtterance(id) {
  return withStore("readwrite", (store) => request(store.delete(id)));
}

export function clearUtterances() {
  return withStore("readwrite", (store) => request(store.clear()));
}
