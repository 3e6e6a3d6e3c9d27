"""A phone caller in a LiveKit room, driven through the worker's room handling with custom
room I/O: no LiveKit server can run here, so the room is a stand-in that emits the events a
connected ``rtc.Room`` emits (attribute changes, SIP DTMF), the caller's audio is the call's
own input/output, and the LiveKit API is a real HTTP server speaking Twirp
(tests/livekit_api_server.py). Models, sessions, tools and call records are the real ones."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
from livekit import api, rtc

from plugins.audio import read_wav, resample
from telephony.livekit_call import LiveKitCall
from worker import records
from worker.livekit_worker import current_load, handle_participant
from worker.models import load_models
from worker.settings import Settings

from .fake_llm import tool_calling_llm
from .livekit_api_server import KEY, SECRET, FakeLiveKit

pytestmark = [pytest.mark.models, pytest.mark.slow]


@dataclass
class FakeParticipant:
    identity: str
    attributes: dict[str, str]
    kind: Any = rtc.ParticipantKind.PARTICIPANT_KIND_SIP


class FakeLocal:
    def __init__(self) -> None:
        self.dtmf: list[tuple[int, str]] = []

    async def publish_dtmf(self, *, code: int, digit: str) -> None:
        self.dtmf.append((code, digit))


class FakeRoom(rtc.EventEmitter[str]):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.local_participant = FakeLocal()

    def isconnected(self) -> bool:
        return True


@dataclass
class Phone:
    """The caller's side: hears the agent in real time and sends audio (silence by default)."""

    call: LiveKitCall
    voiced_at: list[float] = field(default_factory=list)
    queue: list[np.ndarray] = field(default_factory=list)
    drained_at: float | None = None
    """When the last queued caller audio left."""

    async def run(self) -> None:
        start, i = time.monotonic(), 0
        while not self.call.ended.is_set():
            out = self.call.audio_output.read(960)  # 20 ms at 48 kHz
            if np.abs(out).mean() > 100:
                self.voiced_at.append(time.time())
            chunk = self.queue.pop(0) if self.queue else np.zeros(320, np.int16)
            if not self.queue and self.drained_at is None and i > 0:
                self.drained_at = time.time()
            self.call.audio_input.push(rtc.AudioFrame(chunk.tobytes(), 16000, 1, chunk.size))
            i += 1
            await asyncio.sleep(max(0.0, start + i * 0.02 - time.monotonic()))

    def say(self, pcm16k: np.ndarray) -> None:
        self.drained_at = None
        pcm = np.concatenate([pcm16k, np.zeros((-pcm16k.size) % 320, np.int16)])
        self.queue += [pcm[i : i + 320] for i in range(0, pcm.size, 320)]


@pytest_asyncio.fixture
async def env(settings: Settings) -> AsyncIterator[dict[str, Any]]:
    livekit = FakeLiveKit()
    await livekit.start()
    requests: list[dict[str, Any]] = []
    runner, url = await tool_calling_llm(
        requests,
        {
            "pressed 0": "transfer_to_human",
            "pressed 9": "end_call",
            "pressed 5": "warm_transfer_to_human",
        },
    )
    settings.llm.base_url = url
    settings.livekit.transfer_target = "+15559990000"
    settings.livekit.warm_transfer = True
    settings.livekit.outbound_trunk = "ST_out"
    settings.agent.dtmf_gap = 0.3
    models = await load_models(settings)
    yield {"livekit": livekit, "requests": requests, "models": models, "settings": settings}
    await models.aclose()
    await runner.cleanup()
    await livekit.stop()


async def _start(env: dict[str, Any], participant: FakeParticipant, metadata: str = "") -> Any:
    room = FakeRoom("call-_+15550100_abc")
    calls: list[LiveKitCall] = []
    phones: list[Phone] = []
    drivers: list[asyncio.Task[None]] = []

    def on_call(call: LiveKitCall) -> None:
        calls.append(call)
        phones.append(Phone(call))
        drivers.append(asyncio.create_task(phones[0].run()))

    livekit: FakeLiveKit = env["livekit"]
    task = asyncio.create_task(handle_participant(
        env["models"], room, participant, make_api=lambda: api.LiveKitAPI(livekit.url, KEY, SECRET),
        metadata=metadata, custom_io=True, on_call=on_call,
    ))  # fmt: skip
    for _ in range(50):
        if phones:
            break
        await asyncio.sleep(0.02)
    return room, task, calls[0], phones[0]


async def _until(cond: Any, limit: float) -> None:
    deadline = time.monotonic() + limit
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def _answered_then(
    env: dict[str, Any], digit: str
) -> tuple[list[dict[str, Any]], LiveKitCall, FakeRoom]:
    caller = FakeParticipant("sip_+15550100", {
        "sip.phoneNumber": "+15550100", "sip.trunkPhoneNumber": "+15551230000",
        "sip.callID": "SCL_1", "sip.trunkID": "ST_1", "sip.callStatus": "ringing",
    })  # fmt: skip
    room, task, call, phone = await _start(env, caller)
    await asyncio.sleep(1.5)
    settings: Settings = env["settings"]
    assert not phone.voiced_at, "the agent must not speak before the call is answered"
    for path in records.iter_calls(settings.calls_dir):  # the session is up, silent
        assert not [r for r in records.read_records(path) if r.get("role") == "agent"]
    caller.attributes["sip.callStatus"] = "active"
    room.emit("participant_attributes_changed", {"sip.callStatus": "active"}, caller)
    await _until(lambda: phone.voiced_at, 10)  # the greeting
    await _until(lambda: time.time() - phone.voiced_at[-1] > 0.8, 15)
    room.emit("sip_dtmf_received", rtc.SipDTMF(code=int(digit), digit=digit, participant=caller))
    result = await asyncio.wait_for(task, 40)
    assert result is not None
    return records.read_records(result.record.path), call, room


async def test_phone_caller_waits_for_active_then_presses_0_and_is_transferred(
    env: dict[str, Any],
) -> None:
    recs, _, _ = await _answered_then(env, "0")
    settings: Settings = env["settings"]
    assert recs[0]["transport"] == "livekit-sip" and recs[0]["caller"] == "+15550100"
    assert recs[0]["room"] == "call-_+15550100_abc"
    assert [r["digit"] for r in recs if r["type"] == "dtmf"] == ["0"]
    asked = [m for r in env["requests"] for m in r["messages"] if m["role"] == "user"]
    assert any("pressed 0" in str(m["content"]) for m in asked), "digits reach the LLM"
    agent_said = [r["text"] for r in recs if r.get("role") == "agent"]
    assert agent_said[0] == settings.agent.greeting
    assert settings.agent.transfer_notice in agent_said
    (transfer,) = env["livekit"].calls("TransferSIPParticipant")
    assert (transfer.room_name, transfer.participant_identity, transfer.transfer_to) == (
        "call-_+15550100_abc", "sip_+15550100", "tel:+15559990000",
    )  # fmt: skip
    assert recs[-1]["type"] == "call_end" and recs[-1]["reason"] == "transferred"


async def test_warm_transfer_dials_the_colleague_in_and_briefs_them(
    env: dict[str, Any],
) -> None:
    recs, _, _ = await _answered_then(env, "5")
    (dial,) = env["livekit"].calls("CreateSIPParticipant")
    assert (dial.sip_trunk_id, dial.sip_call_to, dial.room_name) == (
        "ST_out", "+15559990000", "call-_+15550100_abc",
    )  # fmt: skip
    assert dial.wait_until_answered
    said = [r["text"] for r in recs if r.get("role") == "agent"]
    briefing = [t for t in said if "I have a caller from +15550100" in t]
    assert briefing and "pressed 5" in briefing[0], said  # what the caller "said" last
    assert not env["livekit"].calls("DeleteRoom"), "the room stays up for the two of them"
    assert recs[-1]["reason"] == "warm_transferred"


async def test_end_call_tool_says_goodbye_and_deletes_the_room(env: dict[str, Any]) -> None:
    recs, call, room = await _answered_then(env, "9")
    settings: Settings = env["settings"]
    assert settings.agent.goodbye in [r["text"] for r in recs if r.get("role") == "agent"]
    (delete,) = env["livekit"].calls("DeleteRoom")
    assert delete.room == "call-_+15550100_abc"
    assert recs[-1]["reason"] == "agent_hangup"
    await call.send_dtmf("1#")  # code can press keys too (published on the room)
    assert room.local_participant.dtmf == [(1, "1"), (11, "#")]


async def test_outbound_call_to_a_machine_leaves_voicemail(
    env: dict[str, Any], espeak: Any
) -> None:
    callee = FakeParticipant("sip-15557654321", {"sip.callStatus": "active"})
    _, task, _, phone = await _start(env, callee, json.dumps({"outbound": True}))
    pcm, rate = read_wav(espeak(
        "Hi, you have reached Sam. I cannot take your call right now, please leave a message "
        "after the tone and I will get back to you."
    ))  # fmt: skip
    t = np.arange(8000) / 16000
    beep = (0.4 * 32767 * np.sin(2 * np.pi * 1000 * t)).astype(np.int16)
    phone.say(np.concatenate([resample(pcm, rate, 16000), np.zeros(3200, np.int16), beep]))
    result = await asyncio.wait_for(task, 60)
    assert result is not None
    recs = records.read_records(result.record.path)
    said = [r["text"] for r in recs if r.get("role") == "agent"]
    settings: Settings = env["settings"]
    assert said == [settings.livekit.voicemail_message], said
    assert recs[-1]["reason"] == "voicemail_left"
    assert env["livekit"].calls("DeleteRoom")
    # the message was left on the recording: it started after the beep had ended
    assert phone.voiced_at and phone.drained_at is not None
    assert phone.voiced_at[0] >= phone.drained_at


async def test_outbound_call_to_a_person_gets_the_normal_greeting(
    env: dict[str, Any], espeak: Any
) -> None:
    callee = FakeParticipant("sip-15557654321", {"sip.callStatus": "active"})
    _, task, call, phone = await _start(env, callee, json.dumps({"outbound": True}))
    pcm, rate = read_wav(espeak("Hello?"))
    phone.say(resample(pcm, rate, 16000))
    await _until(lambda: phone.voiced_at, 15)
    settings: Settings = env["settings"]
    assert current_load() == 1 / settings.max_calls  # reported to LiveKit
    # quiet long enough that the greeting is over, not a gap between its synthesised pieces
    # (one took over 0.8 s on a loaded 2-core machine)
    await _until(lambda: time.time() - phone.voiced_at[-1] > 3.0, 30)
    call.mark_ended("caller_hangup")
    result = await asyncio.wait_for(task, 20)
    assert result is not None
    recs = records.read_records(result.record.path)
    said = [r["text"] for r in recs if r.get("role") == "agent"]
    assert said[:1] == [settings.agent.greeting], json.dumps(recs, indent=0)
    assert current_load() == 0
    # the agent leaves with the caller gone: the room goes too (a phone caller would get a BYE)
    assert len(env["livekit"].calls("DeleteRoom")) == 1
