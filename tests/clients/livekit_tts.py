"""LiveKit Agents' `openai.TTS` against a Morpheus base URL (run in the clients venv).

Usage: python livekit_tts.py BASE_URL OUT_DIR. Prints one JSON object: per case, the frames'
sample rate and channels, the samples received and where their PCM (s16le) was written.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from livekit.agents import tts
from livekit.plugins import openai

TEXT = "Hello there. This is a test of the speech path."
CASES = [
    # (name, model, response_format): gpt-4o-mini-tts asks for SSE, tts-1 for plain audio.
    ("sse-pcm", "gpt-4o-mini-tts", "pcm"),
    ("sse-mp3", "gpt-4o-mini-tts", "mp3"),
    ("audio-pcm", "tts-1", "pcm"),
    ("audio-mp3", "tts-1", "mp3"),
    ("audio-wav", "tts-1", "wav"),
    ("audio-opus", "tts-1", "opus"),
]


async def collect(stream: tts.ChunkedStream | tts.SynthesizeStream) -> dict:
    rates, channels, pcm = set(), set(), bytearray()
    async for event in stream:
        rates.add(event.frame.sample_rate)
        channels.add(event.frame.num_channels)
        pcm += bytes(event.frame.data)
    return {"rates": sorted(rates), "channels": sorted(channels), "pcm": bytes(pcm)}


async def main(base_url: str, out_dir: Path) -> dict:
    results: dict[str, dict] = {}
    for name, model, fmt in CASES:
        engine = openai.TTS(base_url=base_url, api_key="not-needed", model=model, voice="alloy",
                            response_format=fmt)
        try:
            results[name] = await collect(engine.synthesize(TEXT))
        finally:
            await engine.aclose()
    # The non-streaming engine wrapped for streamed (LLM) text, as agents use it.
    engine = openai.TTS(base_url=base_url, api_key="not-needed", model="gpt-4o-mini-tts",
                        voice="alloy", response_format="pcm")
    adapter = tts.StreamAdapter(tts=engine)
    stream = adapter.stream()
    for word in TEXT.split(" "):
        stream.push_text(word + " ")
    stream.end_input()
    results["stream-adapter"] = await collect(stream)
    await stream.aclose()
    # prewarm() is a GET of the base URL; it must answer rather than 404.
    prewarm = await engine._client.get("/", cast_to=str)
    await adapter.aclose()
    await engine.aclose()
    report: dict = {"prewarm": json.loads(prewarm)}
    for name, result in results.items():
        path = out_dir / f"livekit-{name}.pcm"
        path.write_bytes(result.pop("pcm"))
        report[name] = {**result, "pcm_path": str(path)}
    return report


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], Path(sys.argv[2])))))
