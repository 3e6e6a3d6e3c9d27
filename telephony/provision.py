"""Make LiveKit SIP's inbound trunks and dispatch rules match a YAML file.

Objects are matched by name. Missing ones are created, ones that differ are replaced, and
ones on the server but not in the file are reported (never deleted: another team may own
them). Running it twice sends no second create. Secrets (trunk passwords) come from the
environment, named in the file, and are never printed.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from livekit import api
from livekit.protocol import agent_dispatch as dispatch_pb
from livekit.protocol import room as room_pb
from livekit.protocol import sip as sip_pb
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ProvisionError(ValueError):
    """The file cannot be used; the message says where and why."""


T = TypeVar("T")


class RefusedError(RuntimeError):
    """LiveKit refused one request; the message names it, the server's reason and what was
    already applied (provisioning again once the file is fixed picks up from there)."""


async def _send(plan: Plan, action: Action, request: Awaitable[T]) -> T:
    try:
        return await request
    except api.TwirpError as e:
        done = [f"{a.method} {a.name}" for a in plan.actions[:-1]]
        raise RefusedError(
            f"LiveKit refused {action.method} for {action.name!r}: {e.code}: {e.message}"
            + (f" (already applied: {', '.join(done)})" if done else " (nothing was changed)")
        ) from e


class TrunkSpec(BaseModel):
    """One inbound trunk: which numbers it answers and whom it lets in."""

    model_config = ConfigDict(extra="forbid")
    name: str
    numbers: list[str] = Field(default_factory=list)
    allowed_addresses: list[str] = Field(default_factory=list)
    allowed_numbers: list[str] = Field(default_factory=list)
    auth_username: str = ""
    auth_password_env: str | None = Field(
        None, description="Environment variable holding the trunk's digest password."
    )
    krisp_enabled: bool = False
    metadata: str = ""


class RuleSpec(BaseModel):
    """One dispatch rule: which room a call lands in and which agent joins it."""

    model_config = ConfigDict(extra="forbid")
    name: str
    type: Literal["individual", "direct", "callee"] = "individual"
    trunks: list[str] = Field(default_factory=list, description="Trunk names; empty: any.")
    room_prefix: str = "call-"
    room: str | None = Field(None, description="The room, for `direct` rules.")
    pin: str = ""
    randomize: bool = Field(False, description="For `callee`: a random suffix per call.")
    hide_phone_number: bool = False
    agent_name: str | None = Field(None, description="Defaults to the file's agent_name.")
    agent_metadata: str = ""


class SipSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    agent_name: str = "voice-agent"
    inbound_trunks: list[TrunkSpec] = Field(default_factory=list)
    dispatch_rules: list[RuleSpec] = Field(default_factory=list)


def load_spec(path: Path) -> SipSpec:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ProvisionError(f"{path}: {e}") from e
    try:
        spec = SipSpec.model_validate(data)
    except ValidationError as e:
        raise ProvisionError(f"{path}: {e}") from e
    names = [t.name for t in spec.inbound_trunks]
    for rule in spec.dispatch_rules:
        unknown = [t for t in rule.trunks if t not in names]
        if unknown:
            raise ProvisionError(f"{path}: rule {rule.name!r} names unknown trunks {unknown}")
        if rule.type == "direct" and not rule.room:
            raise ProvisionError(f"{path}: direct rule {rule.name!r} needs a room")
    for t in spec.inbound_trunks:
        if t.auth_password_env and not os.environ.get(t.auth_password_env):
            raise ProvisionError(
                f"{path}: trunk {t.name!r} takes its password from ${t.auth_password_env}, "
                "which is not set"
            )
    return spec


def trunk_info(t: TrunkSpec) -> sip_pb.SIPInboundTrunkInfo:
    password = os.environ.get(t.auth_password_env, "") if t.auth_password_env else ""
    return sip_pb.SIPInboundTrunkInfo(
        name=t.name, numbers=t.numbers, allowed_addresses=t.allowed_addresses,
        allowed_numbers=t.allowed_numbers, auth_username=t.auth_username,
        auth_password=password, krisp_enabled=t.krisp_enabled, metadata=t.metadata,
    )  # fmt: skip


def rule_info(r: RuleSpec, agent_name: str, trunk_ids: list[str]) -> sip_pb.SIPDispatchRuleInfo:
    if r.type == "individual":
        rule = sip_pb.SIPDispatchRule(
            dispatch_rule_individual=sip_pb.SIPDispatchRuleIndividual(
                room_prefix=r.room_prefix, pin=r.pin
            )
        )
    elif r.type == "direct":
        rule = sip_pb.SIPDispatchRule(
            dispatch_rule_direct=sip_pb.SIPDispatchRuleDirect(room_name=r.room or "", pin=r.pin)
        )
    else:
        rule = sip_pb.SIPDispatchRule(
            dispatch_rule_callee=sip_pb.SIPDispatchRuleCallee(
                room_prefix=r.room_prefix, pin=r.pin, randomize=r.randomize
            )
        )
    agent = dispatch_pb.RoomAgentDispatch(
        agent_name=r.agent_name or agent_name, metadata=r.agent_metadata
    )
    return sip_pb.SIPDispatchRuleInfo(
        name=r.name, rule=rule, trunk_ids=trunk_ids, hide_phone_number=r.hide_phone_number,
        room_config=room_pb.RoomConfiguration(agents=[agent]),
    )  # fmt: skip


_TRUNK_FIELDS = ("numbers", "allowed_addresses", "allowed_numbers", "auth_username",
                 "krisp_enabled", "metadata")  # fmt: skip


def _trunk_differs(want: sip_pb.SIPInboundTrunkInfo, have: sip_pb.SIPInboundTrunkInfo) -> bool:
    for f in _TRUNK_FIELDS:
        a, b = getattr(want, f), getattr(have, f)
        if isinstance(a, bool | str):
            if a != b:
                return True
        elif sorted(a) != sorted(b):
            return True
    # a password is compared only when the server shows one (LiveKit may not echo it)
    return bool(have.auth_password) and want.auth_password != have.auth_password


def _rule_differs(want: sip_pb.SIPDispatchRuleInfo, have: sip_pb.SIPDispatchRuleInfo) -> bool:
    if want.rule != have.rule or want.hide_phone_number != have.hide_phone_number:
        return True
    if sorted(want.trunk_ids) != sorted(have.trunk_ids):
        return True
    return [(a.agent_name, a.metadata) for a in want.room_config.agents] != [
        (a.agent_name, a.metadata) for a in have.room_config.agents
    ]


@dataclass
class Action:
    """One request provisioning sends (or would send)."""

    method: str
    name: str
    request: Message
    target_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        body = MessageToDict(self.request, preserving_proto_field_name=True)
        _redact(body)
        out: dict[str, Any] = {"method": self.method, "name": self.name, "request": body}
        if self.target_id:
            out["id"] = self.target_id
        return out


def _redact(obj: Any) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if "password" in k and v:
                obj[k] = "***"
            else:
                _redact(v)
    elif isinstance(obj, list):
        for v in obj:
            _redact(v)


@dataclass
class Plan:
    actions: list[Action] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    would_delete: list[dict[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": [a.as_dict() for a in self.actions],
            "unchanged": self.unchanged,
            "not_in_file": self.would_delete,
        }


async def provision(lk: api.LiveKitAPI, spec: SipSpec, *, dry_run: bool = False) -> Plan:
    """Bring the server in line with ``spec``; with ``dry_run`` only list what would be sent."""
    plan = Plan()
    trunks = {t.name: t for t in (await lk.sip.list_inbound_trunk(
        sip_pb.ListSIPInboundTrunkRequest())).items}  # fmt: skip
    rules = {r.name: r for r in (await lk.sip.list_dispatch_rule(
        sip_pb.ListSIPDispatchRuleRequest())).items}  # fmt: skip
    ids: dict[str, str] = {}
    for t in spec.inbound_trunks:
        want = trunk_info(t)
        have = trunks.get(t.name)
        if have is None:
            action = Action("CreateSIPInboundTrunk", t.name,
                            sip_pb.CreateSIPInboundTrunkRequest(trunk=want))  # fmt: skip
            plan.actions.append(action)
            if dry_run:
                ids[t.name] = f"<id of {t.name}>"
            else:
                made = await _send(plan, action, lk.sip.create_inbound_trunk(action.request))  # type: ignore[arg-type]
                ids[t.name] = made.sip_trunk_id
        else:
            ids[t.name] = have.sip_trunk_id
            if _trunk_differs(want, have):
                action = Action(
                    "UpdateSIPInboundTrunk", t.name,
                    sip_pb.UpdateSIPInboundTrunkRequest(sip_trunk_id=have.sip_trunk_id,
                                                         replace=want),
                    target_id=have.sip_trunk_id,
                )  # fmt: skip
                plan.actions.append(action)
                if not dry_run:
                    await _send(plan, action, lk.sip.update_inbound_trunk(have.sip_trunk_id, want))
            else:
                plan.unchanged.append(f"trunk {t.name}")
    for r in spec.dispatch_rules:
        want_rule = rule_info(r, spec.agent_name, [ids[n] for n in r.trunks])
        have_rule = rules.get(r.name)
        if have_rule is None:
            action = Action(
                "CreateSIPDispatchRule", r.name,
                sip_pb.CreateSIPDispatchRuleRequest(dispatch_rule=want_rule),
            )  # fmt: skip
            plan.actions.append(action)
            if not dry_run:
                await _send(plan, action, lk.sip.create_dispatch_rule(action.request))  # type: ignore[arg-type]
        elif _rule_differs(want_rule, have_rule):
            rid = have_rule.sip_dispatch_rule_id
            action = Action(
                "UpdateSIPDispatchRule", r.name,
                sip_pb.UpdateSIPDispatchRuleRequest(sip_dispatch_rule_id=rid, replace=want_rule),
                target_id=rid,
            )  # fmt: skip
            plan.actions.append(action)
            if not dry_run:
                await _send(plan, action, lk.sip.update_dispatch_rule(rid, want_rule))
        else:
            plan.unchanged.append(f"dispatch rule {r.name}")
    wanted_trunks = {t.name for t in spec.inbound_trunks}
    wanted_rules = {r.name for r in spec.dispatch_rules}
    plan.would_delete += [
        {"kind": "trunk", "name": n, "id": t.sip_trunk_id}
        for n, t in trunks.items() if n not in wanted_trunks
    ]  # fmt: skip
    plan.would_delete += [
        {"kind": "dispatch_rule", "name": n, "id": r.sip_dispatch_rule_id}
        for n, r in rules.items() if n not in wanted_rules
    ]  # fmt: skip
    return plan
