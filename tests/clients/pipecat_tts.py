"""Pipecat's `OpenAITTSService` in a real pipeline against a Morpheus base URL (clients venv).

Usage: python pipecat_tts.py BASE_URL OUT_DIR. Speaks one text through Pipeline -> TTS ->
collector and prints one JSON object: the audio frames' rates and channels, their count, any
error frames, and where the joined PCM (s16le) was written.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from pipecat.frames.frames import EndFrame, ErrorFrame, Frame, TTSAudioRawFrame, TTSSpeakFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.runner import PipelineRunner
from pipecat.pipeline.task import PipelineParams, PipelineTask
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.openai.tts import OpenAITTSService

TEXT = "Good evening. The pipeline asks for raw audio in small frames."


class Collector(FrameProcessor):
    """Keeps the audio and error frames that reach the end of the pipeline."""

    def __init__(self) -> None:
        super().__init__()
        self.audio: list[TTSAudioRawFrame] = []
        self.errors: list[str] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, TTSAudioRawFrame):
            self.audio.append(frame)
        elif isinstance(frame, ErrorFrame):
            self.errors.append(frame.error)
        await self.push_frame(frame, direction)


async def main(base_url: str, out_dir: Path) -> dict:
    service = OpenAITTSService(api_key="not-needed", base_url=base_url, voice="alloy",
                               model="tts-1", sample_rate=24000)
    collector = Collector()
    task = PipelineTask(Pipeline([service, collector]),
                        params=PipelineParams(audio_out_sample_rate=24000))
    await task.queue_frames([TTSSpeakFrame(TEXT), EndFrame()])
    await asyncio.wait_for(PipelineRunner(handle_sigint=False).run(task), timeout=120)
    path = out_dir / "pipecat.pcm"
    path.write_bytes(b"".join(frame.audio for frame in collector.audio))
    return {
        "frames": len(collector.audio),
        "rates": sorted({f.sample_rate for f in collector.audio}),
        "channels": sorted({f.num_channels for f in collector.audio}),
        "errors": collector.errors,
        "pcm_path": str(path),
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], Path(sys.argv[2])))))
