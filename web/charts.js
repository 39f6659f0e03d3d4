// Two small canvas drawings: chunk sizes over time (bars) and the waveform of what plays.

function colours(canvas) {
  const style = getComputedStyle(canvas);
  return {
    bar: style.getPropertyValue("--bar").trim() || "#6d83d6",
    muted: style.getPropertyValue("--muted").trim() || "#888",
    fg: style.getPropertyValue("--fg").trim() || "#222",
  };
}

/** Bars of the last `max` chunk durations (ms), scaled to the largest. */
export function drawChunks(canvas, chunksMs, max = 60) {
  const ctx = canvas.getContext("2d");
  const { width, height } = canvas;
  const { bar, muted } = colours(canvas);
  ctx.clearRect(0, 0, width, height);
  const shown = chunksMs.slice(-max);
  if (shown.length === 0) return;
  const top = Math.max(...shown);
  const step = width / Math.min(max, Math.max(16, shown.length));
  ctx.fillStyle = bar;
  shown.forEach((ms, i) => {
    const h = Math.max(1, ((height - 16) * ms) / top);
    ctx.fillRect(i * step + 1, height - h, Math.max(1, step - 2), h);
  });
  ctx.fillStyle = muted;
  ctx.font = "12px system-ui, sans-serif";
  ctx.fillText(`max ${Math.round(top)} ms`, 4, 12);
}

/** Min/max peaks of `samples` across the canvas; played part in the accent colour. */
export function drawWaveform(canvas, samples, playedSamples) {
  const ctx = canvas.getContext("2d");
  const { width, height } = canvas;
  const { bar, muted } = colours(canvas);
  ctx.clearRect(0, 0, width, height);
  const mid = height / 2;
  ctx.fillStyle = muted;
  ctx.fillRect(0, mid, width, 1);
  if (!samples || samples.length === 0) return;
  const perColumn = samples.length / width;
  for (let x = 0; x < width; x++) {
    const from = Math.floor(x * perColumn);
    const to = Math.max(from + 1, Math.floor((x + 1) * perColumn));
    let lo = 0;
    let hi = 0;
    for (let i = from; i < to && i < samples.length; i++) {
      if (samples[i] < lo) lo = samples[i];
      if (samples[i] > hi) hi = samples[i];
    }
    ctx.fillStyle = from < playedSamples ? bar : muted;
    ctx.fillRect(x, mid - hi * mid, 1, Math.max(1, (hi - lo) * mid));
  }
}
