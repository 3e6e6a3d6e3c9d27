"""Provisioning, outbound dialling and call control against a real HTTP server that speaks
LiveKit's Twirp API (tests/livekit_api_server.py): every request is decoded and its fields
and access-token grants are checked."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from livekit import api

from telephony.livekit_call import CallInfo, LiveKitCall
from telephony.provision import ProvisionError, load_spec, provision

from .livekit_api_server import KEY, SECRET, FakeLiveKit

ROOT = Path(__file__).resolve().parent.parent


@pytest_asyncio.fixture
async def livekit(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeLiveKit]:
    server = FakeLiveKit()
    await server.start()
    monkeypatch.setenv("MAIN_LINE_SIP_PASSWORD", "trunk-s3cret")
    yield server
    await server.stop()


def _api(server: FakeLiveKit) -> api.LiveKitAPI:
    return api.LiveKitAPI(server.url, KEY, SECRET)


async def test_provision_creates_once_then_updates_only_what_differs(
    livekit: FakeLiveKit, tmp_path: Path
) -> None:
    spec = load_spec(ROOT / "infra/sip.yaml")
    lk = _api(livekit)
    try:
        plan = await provision(lk, spec)
        assert [a.method for a in plan.actions] == [
            "CreateSIPInboundTrunk",
            "CreateSIPDispatchRule",
        ]
        (trunk,) = livekit.calls("CreateSIPInboundTrunk")
        assert trunk.trunk.name == "main-line" and list(trunk.trunk.numbers) == ["+15551230000"]
        assert list(trunk.trunk.allowed_addresses) == ["203.0.113.0/24"]
        assert trunk.trunk.auth_username == "main-line"
        assert trunk.trunk.auth_password == "trunk-s3cret"  # from the environment
        (rule,) = livekit.calls("CreateSIPDispatchRule")
        info = rule.dispatch_rule
        assert info.name == "main-line-calls" and list(info.trunk_ids) == ["ST_1"]
        assert info.rule.dispatch_rule_individual.room_prefix == "call-"
        assert [a.agent_name for a in info.room_config.agents] == ["voice-agent"]
        assert info.room_config.agents[0].metadata == '{"line": "main"}'
        sip_admin = [r.claims for r in livekit.requests]
        assert all(c.sip and c.sip.admin for c in sip_admin)

        before = len(livekit.requests)
        again = await provision(lk, spec)
        assert again.actions == [] and len(again.unchanged) == 2
        methods = [r.method.split("/")[1] for r in livekit.requests[before:]]
        assert all(m.startswith("List") for m in methods), methods  # no second create

        changed = (ROOT / "infra/sip.yaml").read_text().replace("+15551230000", "+15551239999")
        (tmp_path / "sip.yaml").write_text(changed)
        third = await provision(lk, load_spec(tmp_path / "sip.yaml"))
        assert [a.method for a in third.actions] == ["UpdateSIPInboundTrunk"]
        (update,) = livekit.calls("UpdateSIPInboundTrunk")
        assert update.sip_trunk_id == "ST_1" and list(update.replace.numbers) == ["+15551239999"]
    finally:
        await lk.aclose()


def _cli(server: FakeLiveKit, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LIVEKIT_URL": server.url.replace("http", "ws"),
           "LIVEKIT_API_KEY": KEY, "LIVEKIT_API_SECRET": SECRET,
           "MAIN_LINE_SIP_PASSWORD": "trunk-s3cret"}  # fmt: skip
    return subprocess.run([sys.executable, "-m", "worker", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


async def test_provision_dry_run_prints_requests_and_sends_none(livekit: FakeLiveKit) -> None:
    proc = await asyncio.to_thread(
        _cli, livekit, "provision", "infra/sip.yaml", "--dry-run", "--json"
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert [r["method"] for r in out["requests"]] == [
        "CreateSIPInboundTrunk", "CreateSIPDispatchRule",
    ]  # fmt: skip
    assert out["requests"][0]["request"]["trunk"]["auth_password"] == "***"
    assert "trunk-s3cret" not in proc.stdout + proc.stderr
    assert out["requests"][1]["request"]["dispatch_rule"]["trunk_ids"] == ["<id of main-line>"]
    assert not [r for r in livekit.requests if "/Create" in r.method]


async def test_provision_rejects_a_bad_file(tmp_path: Path) -> None:
    bad = tmp_path / "sip.yaml"
    bad.write_text("dispatch_rules:\n  - name: r\n    trunks: [nope]\n")
    with pytest.raises(ProvisionError, match="unknown trunks"):
        load_spec(bad)
    bad.write_text("inbound_trunks:\n  - name: t\n    colour: blue\n")
    with pytest.raises(ProvisionError, match="colour"):
        load_spec(bad)


async def test_outbound_call_dispatches_the_agent_and_dials(livekit: FakeLiveKit) -> None:
    proc = await asyncio.to_thread(
        _cli, livekit, "dial", "+15557654321", "--trunk", "ST_out", "--room", "out-1"
    )
    assert proc.returncode == 0, proc.stderr
    (dispatch,) = livekit.calls("CreateDispatch")
    assert dispatch.agent_name == "voice-agent" and dispatch.room == "out-1"
    assert json.loads(dispatch.metadata) == {"outbound": True, "phone_number": "+15557654321"}
    (dial,) = livekit.calls("CreateSIPParticipant")
    assert (dial.sip_trunk_id, dial.sip_call_to, dial.room_name) == (
        "ST_out", "+15557654321", "out-1",
    )  # fmt: skip
    assert dial.participant_identity == "sip-15557654321" and dial.wait_until_answered
    assert json.loads(proc.stdout)["participant_identity"] == "sip-15557654321"
    claims = [r.claims for r in livekit.requests if r.method.endswith("CreateSIPParticipant")]
    assert claims[0].sip.call


async def test_hangup_deletes_the_room_and_transfer_refers(livekit: FakeLiveKit) -> None:
    info = CallInfo.from_attributes({
        "sip.phoneNumber": "+15550100", "sip.trunkPhoneNumber": "+15551230000",
        "sip.callID": "SCL_9", "sip.trunkID": "ST_1", "sip.callStatus": "active",
        "sip.h.x-customer": "42",
    })  # fmt: skip
    assert info.phone_number == "+15550100" and info.headers == {"sip.h.x-customer": "42"}
    call = LiveKitCall("c1", room_name="call-abc", participant_identity="sip_+15550100",
                       sip=True, api_factory=lambda: _api(livekit), info=info)  # fmt: skip
    assert call.transport == "livekit-sip" and call.caller == "+15550100"
    await call.transfer("+15559990000")
    (transfer,) = livekit.calls("TransferSIPParticipant")
    assert (transfer.room_name, transfer.participant_identity, transfer.transfer_to) == (
        "call-abc", "sip_+15550100", "tel:+15559990000",
    )  # fmt: skip
    claims = next(r.claims for r in livekit.requests if "Transfer" in r.method)
    assert claims.video.room_admin and claims.video.room == "call-abc"
    assert call.ended.is_set() and call.end_reason == "transferred"

    call2 = LiveKitCall("c2", room_name="call-def", participant_identity="web-1", sip=False,
                        api_factory=lambda: _api(livekit))  # fmt: skip
    with pytest.raises(NotImplementedError):
        await call2.transfer("+15559990000")
    await call2.hangup()
    (delete,) = livekit.calls("DeleteRoom")
    assert delete.room == "call-def" and call2.end_reason == "agent_hangup"
