"""A real local HTTP server speaking LiveKit's Twirp API (protobuf over HTTP POST), standing in
for a LiveKit server, which cannot run on our machines. It checks each request's access token
against the API secret, records the decoded request, and keeps trunks and dispatch rules so
list calls see what earlier creates made."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from google.protobuf.message import Message
from livekit import api
from livekit.protocol import agent_dispatch as dispatch_pb
from livekit.protocol import room as room_pb
from livekit.protocol import sip as sip_pb

from plugins.net import free_port

KEY, SECRET = "devkey", "devsecret-devsecret-devsecret-0123"

# method -> (request class, response class)
METHODS: dict[str, tuple[type[Message], type[Message]]] = {
    "livekit.SIP/ListSIPInboundTrunk": (sip_pb.ListSIPInboundTrunkRequest,
                                        sip_pb.ListSIPInboundTrunkResponse),
    "livekit.SIP/CreateSIPInboundTrunk": (sip_pb.CreateSIPInboundTrunkRequest,
                                          sip_pb.SIPInboundTrunkInfo),
    "livekit.SIP/UpdateSIPInboundTrunk": (sip_pb.UpdateSIPInboundTrunkRequest,
                                          sip_pb.SIPInboundTrunkInfo),
    "livekit.SIP/ListSIPDispatchRule": (sip_pb.ListSIPDispatchRuleRequest,
                                        sip_pb.ListSIPDispatchRuleResponse),
    "livekit.SIP/CreateSIPDispatchRule": (sip_pb.CreateSIPDispatchRuleRequest,
                                          sip_pb.SIPDispatchRuleInfo),
    "livekit.SIP/UpdateSIPDispatchRule": (sip_pb.UpdateSIPDispatchRuleRequest,
                                          sip_pb.SIPDispatchRuleInfo),
    "livekit.SIP/CreateSIPParticipant": (sip_pb.CreateSIPParticipantRequest,
                                         sip_pb.SIPParticipantInfo),
    "livekit.SIP/TransferSIPParticipant": (sip_pb.TransferSIPParticipantRequest,
                                           sip_pb.TransferSIPParticipantResponse),
    "livekit.RoomService/DeleteRoom": (room_pb.DeleteRoomRequest, room_pb.DeleteRoomResponse),
    "livekit.AgentDispatchService/CreateDispatch": (dispatch_pb.CreateAgentDispatchRequest,
                                                    dispatch_pb.AgentDispatch),
}  # fmt: skip


@dataclass
class Recorded:
    method: str
    request: Any
    claims: Any


@dataclass
class FakeLiveKit:
    requests: list[Recorded] = field(default_factory=list)
    trunks: dict[str, sip_pb.SIPInboundTrunkInfo] = field(default_factory=dict)
    rules: dict[str, sip_pb.SIPDispatchRuleInfo] = field(default_factory=dict)
    url: str = ""
    _runner: web.AppRunner | None = None

    def calls(self, method: str) -> list[Any]:
        return [r.request for r in self.requests if r.method.endswith("/" + method)]

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/twirp/{service}/{method}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        name = f"{request.match_info['service']}/{request.match_info['method']}"
        if name not in METHODS:
            return web.json_response({"code": "bad_route", "msg": name}, status=404)
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        try:
            claims = api.TokenVerifier(KEY, SECRET).verify(token)
        except Exception as e:  # any bad token is a 401, as LiveKit answers
            return web.json_response({"code": "unauthenticated", "msg": str(e)}, status=401)
        req_cls, resp_cls = METHODS[name]
        msg = req_cls()
        msg.ParseFromString(await request.read())
        self.requests.append(Recorded(name, msg, claims))
        resp = self._respond(name.split("/")[1], msg, resp_cls)
        return web.Response(body=resp.SerializeToString(), content_type="application/protobuf")

    def _respond(self, method: str, msg: Any, resp_cls: type[Message]) -> Message:
        if method == "ListSIPInboundTrunk":
            return sip_pb.ListSIPInboundTrunkResponse(items=list(self.trunks.values()))
        if method == "ListSIPDispatchRule":
            return sip_pb.ListSIPDispatchRuleResponse(items=list(self.rules.values()))
        if method == "CreateSIPInboundTrunk":
            info = sip_pb.SIPInboundTrunkInfo()
            info.CopyFrom(msg.trunk)
            info.sip_trunk_id = f"ST_{len(self.trunks) + 1}"
            info.auth_password = ""  # LiveKit does not echo secrets
            self.trunks[info.sip_trunk_id] = info
            return info
        if method == "UpdateSIPInboundTrunk":
            info = sip_pb.SIPInboundTrunkInfo()
            info.CopyFrom(msg.replace)
            info.sip_trunk_id = msg.sip_trunk_id
            info.auth_password = ""
            self.trunks[msg.sip_trunk_id] = info
            return info
        if method == "CreateSIPDispatchRule":
            rule = sip_pb.SIPDispatchRuleInfo()
            rule.CopyFrom(msg.dispatch_rule)
            rule.sip_dispatch_rule_id = f"SDR_{len(self.rules) + 1}"
            self.rules[rule.sip_dispatch_rule_id] = rule
            return rule
        if method == "UpdateSIPDispatchRule":
            rule = sip_pb.SIPDispatchRuleInfo()
            rule.CopyFrom(msg.replace)
            rule.sip_dispatch_rule_id = msg.sip_dispatch_rule_id
            self.rules[msg.sip_dispatch_rule_id] = rule
            return rule
        if method == "CreateSIPParticipant":
            return sip_pb.SIPParticipantInfo(
                participant_id="PA_1", participant_identity=msg.participant_identity,
                room_name=msg.room_name, sip_call_id="SCL_1",
            )  # fmt: skip
        if method == "CreateDispatch":
            return dispatch_pb.AgentDispatch(
                id="AD_1", agent_name=msg.agent_name, room=msg.room, metadata=msg.metadata
            )
        return resp_cls()
