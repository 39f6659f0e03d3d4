"""Realtime sessions on turn-shaped engines (the stub) and on Orpheus: session fields, end."""

from __future__ import annotations

from pathlib import Path

import anyio
import msgspec
import numpy as np
import pytest
from morpheus_tts.host.runtime import Runtime, SpeakRequest
from morpheus_tts.host.session_events import AudioDelta, SessionEvent
from morpheus_tts.host.session_manager import SessionManager
from morpheus_tts.host.sessions import Session
from orpheus_fixtures import SLIM_SNAC_CONFIG, write_snac_dir, write_tiny_orpheus_gguf
from test_orpheus import orpheus_runtime
from test_turns import expected_audio, turn_runtime

pytestmark = pytest.mark.anyio


async def events_until(session: Session, until: str, turn: int) -> list[SessionEvent]:
    """Events (reporting each audio delta delivered) up to `until` of `turn`."""
    lease = session.attach()
    seen = []
    with anyio.fail_after(60):
        while (event := await session.next_event(lease)) is not None:
            seen.append(event)
            if isinstance(event, AudioDelta):
                session.delivered(event)
            tag = type(event).__struct_config__.tag
            if tag == until and event.turn == turn:
                break
    session.detach(lease)
    return seen


def turn_audio(events: list[SessionEvent], turn: int) -> np.ndarray:
    return np.concatenate([e.samples for e in events if isinstance(e, AudioDelta)
                           and e.turn == turn])


async def test_two_session_turns_are_the_engine_samples_with_session_fields() -> None:
    runtime = turn_runtime()
    async with runtime.running():
        stub = runtime.registry.engine("turnstub").engine
        manager = SessionManager(runtime)
        session = manager.create(SpeakRequest(pace=False))
        session.send_text("Good mor")
        session.send_text("ning all", final=True)
        first = await events_until(session, "turn.done", 1)
        session.send_text("Second turn here", final=True)
        second = await events_until(session, "turn.done", 2)
        np.testing.assert_array_equal(turn_audio(first, 1), expected_audio(["Good", "morning",
                                                                             "all"]))
        np.testing.assert_array_equal(turn_audio(second, 2),
                                      expected_audio(["Second", "turn", "here"]))
        opened = [c for c in stub.calls if c["call"] == "open_turn"]
        assert [(c["session_id"], c["turn"], c["options"]) for c in opened] == [
            (session.id, 1, {}), (session.id, 2, {}),
        ]
        await manager.close(session.id)
        await manager.close(session.id)  # twice: still one end_session
        ends = [c for c in stub.calls if c["call"] == "end_session"]
        assert ends == [{"call": "end_session", "session_id": session.id}]


async def test_barge_in_in_a_session_interrupts_with_what_was_delivered() -> None:
    runtime = turn_runtime(step_delay_ms=20)
    async with runtime.running():
        stub = runtime.registry.engine("turnstub").engine
        manager = SessionManager(runtime)
        session = manager.create(SpeakRequest(pace=False))
        session.send_text("word " * 80, final=True)
        lease = session.attach()
        delivered = 0
        with anyio.fail_after(30):
            while delivered < 4 * 2400:
                event = await session.next_event(lease)
                if isinstance(event, AudioDelta):
                    session.delivered(event)
                    delivered += len(event.samples)
            session.barge_in()
            while not any(c["call"] == "close" for c in stub.calls):
                await anyio.sleep(0.01)
        [interrupt] = [c for c in stub.calls if c["call"] == "interrupt"]
        assert 0 < interrupt["heard"] <= delivered
        await manager.close(session.id)


async def test_an_idle_session_expires_and_its_engine_state_ends_once() -> None:
    runtime = turn_runtime()
    runtime.config.server = msgspec.structs.replace(
        runtime.config.server, session_idle_timeout_s=0.2
    )
    async with runtime.running():
        stub = runtime.registry.engine("turnstub").engine
        manager = SessionManager(runtime)
        manager.start()
        session = manager.create(SpeakRequest(pace=False))
        session.send_text("Short one", final=True)
        await events_until(session, "turn.done", 1)
        with anyio.fail_after(10):
            while len(manager):
                await anyio.sleep(0.05)
        await anyio.sleep(0.3)  # more expiry rounds: still once
        assert [c for c in stub.calls if c["call"] == "end_session"] == [
            {"call": "end_session", "session_id": session.id}
        ]
        assert session.closed_reason == "expired"


async def test_orpheus_speaks_in_a_realtime_session(tmp_path: Path) -> None:
    gguf = write_tiny_orpheus_gguf(tmp_path / "tiny.gguf")
    snac = write_snac_dir(tmp_path / "snac", config=SLIM_SNAC_CONFIG)
    settings = {"model_path": str(gguf), "n_ctx": 2048, "n_threads": 1, "max_tokens": 140}
    runtime: Runtime = orpheus_runtime(settings, snac)
    async with runtime.running():
        manager = SessionManager(runtime)
        session = manager.create(SpeakRequest(engine="orpheus", voice="tara", pace=False))
        for turn in (1, 2):
            session.send_text("Hello there.", final=True)
            events = await events_until(session, "turn.done", turn)
            kinds = [type(e).__struct_config__.tag for e in events]
            assert "turn.error" not in kinds, events
            assert len(turn_audio(events, turn)) > 0
        await manager.close(session.id)


def test_a_cancelled_orpheus_step_stops_between_tokens(tmp_path: Path) -> None:
    from morpheus_tts.host import SynthesisRequest
    from morpheus_tts.plugins.engines.orpheus import OrpheusEngine, OrpheusSettings

    gguf = write_tiny_orpheus_gguf(tmp_path / "tiny.gguf")
    settings = OrpheusSettings(model_path=str(gguf), n_ctx=2048, n_threads=1, max_tokens=700)
    engine = OrpheusEngine(settings)
    anyio.run(engine.start)
    try:
        steps = engine.synthesize(SynthesisRequest(text="Hello there.", chunk_size=7,
                                                   options={"seed": 3}))
        assert len(next(steps)) == 1
        steps.cancel()
        with pytest.raises(StopIteration):
            next(steps)
        steps.close()
    finally:
        anyio.run(engine.stop)
