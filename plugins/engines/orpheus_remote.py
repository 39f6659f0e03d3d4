"""Orpheus's remote backend: streamed `/v1/completions` from llama.cpp or a compatible server.

One keep-alive `httpx.AsyncClient` per engine; each segment is one streaming POST whose SSE events
carry `<custom_token_N>` text, parsed back into ids and assembled into (frames, 7) chunks.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
from morpheus_tts.plugins.engines.orpheus_tokens import (
    CustomTokenParser,
    FrameAssembler,
    prompt_text,
)

if TYPE_CHECKING:
    from morpheus_tts.plugins.engines.orpheus import ChunkPlan, OrpheusSettings, Sampling


class RemoteCompletions:
    """The remote backend: streamed `/v1/completions` from llama.cpp or a compatible server."""

    def __init__(self, settings: OrpheusSettings) -> None:
        self.settings = settings
        self.url = settings.server_url.rstrip("/").removesuffix("/v1")  # type: ignore[union-attr]
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        """Open the keep-alive client and check that the server answers."""
        headers = (
            {"Authorization": f"Bearer {self.settings.api_key}"} if self.settings.api_key else {}
        )
        client = httpx.AsyncClient(
            base_url=self.url,
            headers=headers,
            timeout=httpx.Timeout(self.settings.timeout_s),
            limits=httpx.Limits(max_keepalive_connections=8, keepalive_expiry=60.0),
        )
        try:
            response = await client.get("/health")
            if response.status_code == 404:  # OpenAI-compatible servers have no /health
                response = await client.get("/v1/models")
        except httpx.HTTPError as exc:
            await client.aclose()
            raise ConnectionError(
                f"orpheus: no server answers at {self.url} ({type(exc).__name__}: {exc}); start "
                f"llama.cpp's server there or fix plugins.orpheus.settings.server_url"
            ) from exc
        if response.status_code != 200:
            await client.aclose()
            raise ConnectionError(
                f"orpheus: the server at {self.url} answered {response.status_code} to "
                f"{response.request.url.path}; is it still loading the model?"
            )
        self._client = client

    async def stop(self) -> None:
        """Close the client's connections."""
        if self._client is not None:
            await self._client.aclose()
        self._client = None

    @property
    def ready(self) -> bool:
        """The server answered at start."""
        return self._client is not None

    def synthesize(
        self, voice: str, text: str, sampling: Sampling, plan: ChunkPlan
    ) -> AsyncIterator[np.ndarray]:
        """Generate one segment on the server; yields one chunk of frames at a time."""
        if self._client is None:
            raise RuntimeError("orpheus engine is not started")
        body: dict[str, Any] = {
            "model": self.settings.server_model,
            "prompt": prompt_text(voice, text),
            "max_tokens": sampling.max_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "top_k": 0,
            "min_p": 0.0,
            # llama.cpp's name, and vLLM's: each server ignores the other's.
            "repeat_penalty": sampling.repetition_penalty,
            "repetition_penalty": sampling.repetition_penalty,
            "stop": ["<custom_token_2>"],  # end of speech
            "stream": True,
            "cache_prompt": True,
        }
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        return self._chunks(self._client, body, plan)

    async def _chunks(
        self, client: httpx.AsyncClient, body: dict[str, Any], plan: ChunkPlan
    ) -> AsyncIterator[np.ndarray]:
        assembler = FrameAssembler()
        parser = CustomTokenParser()
        index = 0
        async with client.stream("POST", "/v1/completions", json=body) as response:
            if response.status_code != 200:
                detail = (await response.aread()).decode(errors="replace")[:500]
                raise RuntimeError(
                    f"orpheus: {self.url}/v1/completions answered {response.status_code}: {detail}"
                )
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line.removeprefix("data:").strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if "error" in event:  # llama.cpp reports failures mid-stream this way
                    raise RuntimeError(f"orpheus: {self.url} failed mid-stream: {event['error']}")
                choices = event.get("choices") or [{}]
                assembler.extend(parser.feed(choices[0].get("text") or ""))
                while assembler.ready >= plan.size(index):
                    yield assembler.take(plan.size(index))
                    index += 1
                if assembler.ended:
                    break
        rest = assembler.take()
        if len(rest):
            yield rest
