#!/usr/bin/env python3
"""Golden wire vectors for chat-core, produced by a reference MessagePack implementation.

How the vectors were made:
    python3 chat-core/tests/golden/make_golden.py > chat-core/tests/golden/vectors.txt
with Python 3.11 and the `msgpack` package 1.2.4 (`msgpack.packb(d)` with its defaults,
i.e. `use_bin_type=True`: strings as str8/16/32, integers in their smallest form), and for
JSON `json.dumps(d, separators=(",", ":"), ensure_ascii=False)` encoded as UTF-8 (compact,
non-ASCII kept as UTF-8: what serde_json writes).

The dicts are the examples of seed 000 (login/users/channel/channels/publish/message
requests and replies, the channel and user publications, the replication event) with
concrete values, written in the exact key order our encoder writes (chat-core/src/wire.rs):

* request/reply `data`: status, election, user, channel, src, dst, message, users,
  channels, messages, next, before, limit, rank, endpoint, list, coordinator, term, server,
  time, adjust_ms, description, code, id, timestamp, clock;
* publications: user, src, message, timestamp, clock, channel, dst, id, rid, prev (the
  seed dict, then our extra keys `channel`/`dst`, `id`, and on live publications `rid` and
  `prev`);
* replication event: {operation, data: {user, channel, src, dst, message, timestamp, id},
  server, clock, seq} (the seed dict plus our `seq`).

Lines are `name hex`. Names ending in `.msgpack` / `.json` are the encoding. Names under
`enc/` must be produced byte for byte by our encoder from the typed value the Rust test
builds (and decode back to it); names under `dec/` are the liberal shapes other clients
send (seed 002/003 variants, unknown extra fields) and are only decoded.

The Rust test (chat-core/tests/golden.rs) never runs Python: it reads the committed file.
"""

import json
import sys

import msgpack

TS = "2025-11-12T10:00:00.000Z"  # 1_762_941_600_000 ms
TS2 = "2025-11-12T10:00:01.250Z"  # 1_762_941_601_250 ms


def env(service, data):
    return {"service": service, "data": data}


# Vectors our encoder must reproduce exactly (and decode back).
ENCODE = [
    # seed 000: login
    ("login_request", env("login", {"user": "user1", "timestamp": TS, "clock": 10})),
    ("login_reply", env("login", {"status": "sucesso", "timestamp": TS2, "clock": 11})),
    # seed 000: users
    ("users_request", env("users", {"timestamp": TS, "clock": 12})),
    ("users_reply", env("users", {"users": ["user1", "user2"], "timestamp": TS2, "clock": 13})),
    # seed 000: channel
    ("channel_request", env("channel", {"channel": "geral", "timestamp": TS, "clock": 14})),
    ("channel_reply", env("channel", {"status": "sucesso", "timestamp": TS2, "clock": 15})),
    # seed 000: channels
    ("channels_request", env("channels", {"timestamp": TS, "clock": 16})),
    ("channels_reply", env("channels", {"channels": ["geral", "tech"], "timestamp": TS2, "clock": 17})),
    # seed 000: publish
    (
        "publish_request",
        env("publish", {"user": "user1", "channel": "geral", "message": "Olá!", "timestamp": TS, "clock": 18}),
    ),
    ("publish_reply", env("publish", {"status": "OK", "timestamp": TS2, "clock": 19})),
    # seed 000: message
    (
        "message_request",
        env("message", {"src": "user1", "dst": "user2", "message": "Oi!", "timestamp": TS, "clock": 20}),
    ),
    ("message_reply", env("message", {"status": "OK", "timestamp": TS2, "clock": 21})),
    # seed 000 publications, plus our `channel` / `dst` and `id`
    (
        "channel_publication",
        {"user": "user1", "message": "Olá!", "timestamp": TS2, "clock": 19, "channel": "geral", "id": "server-1/7"},
    ),
    (
        "user_publication",
        {"src": "user1", "message": "Oi!", "timestamp": TS2, "clock": 21, "dst": "user2", "id": "server-1/8"},
    ),
    # live publications with the request id of the write and the previous sequence number
    # of the same origin on the topic (what subscribers use to drop repeats and find gaps)
    (
        "channel_publication_live",
        {
            "user": "user1",
            "message": "Olá!",
            "timestamp": TS2,
            "clock": 19,
            "channel": "geral",
            "id": "server-1/7",
            "rid": "9f86d081884c7d659a2feaa0c55ad015",
            "prev": 4,
        },
    ),
    (
        "user_publication_live",
        {"src": "user1", "message": "Oi!", "timestamp": TS2, "clock": 21, "dst": "user2", "id": "server-1/8", "rid": "r-8", "prev": 0},
    ),
    # seed 000 replication events, plus our `seq` (and the client's request id when given)
    (
        "event_login",
        {"operation": "login", "data": {"user": "user1", "timestamp": TS}, "server": "server_1234", "clock": 42, "seq": 1},
    ),
    (
        "event_channel",
        {"operation": "channel", "data": {"channel": "geral", "timestamp": TS}, "server": "server_1234", "clock": 43, "seq": 2},
    ),
    (
        "event_publication",
        {
            "operation": "publication",
            "data": {"user": "user1", "channel": "geral", "message": "Olá!", "timestamp": TS2, "id": "req-9"},
            "server": "server_1234",
            "clock": 300,
            "seq": 3,
        },
    ),
    (
        "event_message",
        {
            "operation": "message",
            "data": {"src": "user1", "dst": "user2", "message": "Oi!", "timestamp": TS2},
            "server": "server-2",
            "clock": 70000,
            "seq": 65536,
        },
    ),
    # beyond the seeds
    (
        "publish_request_with_id",
        env(
            "publish",
            {"user": "ana", "channel": "geral", "message": "x" * 40, "id": "req-1", "timestamp": TS, "clock": 2**40},
        ),
    ),
    (
        "error_reply",
        env(
            "publish",
            {
                "status": "erro",
                "description": "channel `nada` does not exist; create it first",
                "code": "unknown_channel",
                "timestamp": TS2,
                "clock": 23,
            },
        ),
    ),
    (
        "history_request",
        env("history", {"channel": "geral", "before": "19.7.server-1", "limit": 20, "timestamp": TS, "clock": 24}),
    ),
    (
        "history_reply",
        env(
            "history",
            {
                "messages": [
                    {"user": "user1", "message": "Olá!", "timestamp": TS2, "clock": 19, "channel": "geral", "id": "server-1/7"},
                    {"user": "ana", "message": "é" * 150, "timestamp": TS2, "clock": 255, "channel": "geral"},
                ],
                "next": "19.7.server-1",
                "timestamp": TS2,
                "clock": 25,
            },
        ),
    ),
    (
        "adjust_request",
        env("adjust", {"adjust_ms": -1500, "timestamp": TS, "clock": 26}),
    ),
    (
        "announcement",
        env("election", {"rank": 7, "coordinator": "server-2", "term": 3, "timestamp": TS, "clock": 30}),
    ),
]

# Shapes other clients send; decoded only (the Rust test knows the typed value each means).
DECODE = [
    # seed 003: clock/timestamp at the top level, `msg` for `message`, naive ISO time
    (
        "seed003_publish",
        {"service": "publish", "data": {"channel": "Geral", "msg": "Olá", "user": "x"}, "clock": 7, "timestamp": "2025-11-12T10:00:00"},
    ),
    ("seed003_login", {"service": "login", "data": {"user": "nome"}, "clock": 5}),
    # seed 003 `message` names the sender `user`
    (
        "seed003_message",
        {"service": "message", "data": {"dst": "Pedro", "msg": "Privado", "user": "ana"}, "clock": 8},
    ),
    # seed 002: Unix timestamps, int and float seconds
    ("seed002_login_int", env("login", {"user": "ana", "timestamp": 1762941600, "clock": 42})),
    ("seed002_login_float", env("login", {"user": "ana", "timestamp": 1762941600.5, "clock": 42})),
    # seed 000 shape with unknown extra fields everywhere, and an integer request id
    (
        "extra_fields_publish",
        {
            "service": "publish",
            "version": 2,
            "data": {
                "user": "user1",
                "color": "blue",
                "channel": "geral",
                "message": "Olá!",
                "nested": {"a": [1, None, True, 2.5]},
                "id": 17,
                "timestamp": TS,
                "clock": 18,
            },
            "trace": [1, 2, 3],
        },
    ),
    # seed 000 reply with clock/timestamp at the top level (seed 003 style)
    ("seed003_publish_reply", {"service": "publish", "data": {"status": "OK"}, "clock": 19, "timestamp": TS2}),
    # a seed server's channel publication: no `channel`, no `id` (the topic says the channel)
    ("seed000_channel_publication", {"user": "user1", "message": "Olá!", "timestamp": TS2, "clock": 19}),
    # a seed server's private message publication (topic says the recipient), Unix time
    ("seed002_user_publication", {"src": "user1", "msg": "Oi!", "timestamp": 1762941601.25, "clock": 21, "extra": 1}),
]


def json_bytes(d):
    return json.dumps(d, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def main(out):
    out.write("# Golden wire vectors for chat-core; generated, do not edit by hand.\n")
    out.write("# Made by: python3 chat-core/tests/golden/make_golden.py > chat-core/tests/golden/vectors.txt\n")
    out.write(
        "# Python %s, msgpack %s (msgpack.packb defaults), json.dumps compact ensure_ascii=False\n"
        % (sys.version.split()[0], ".".join(map(str, msgpack.version)))
    )
    for prefix, table in (("enc", ENCODE), ("dec", DECODE)):
        for name, d in table:
            out.write("%s/%s.msgpack %s\n" % (prefix, name, msgpack.packb(d).hex()))
            out.write("%s/%s.json %s\n" % (prefix, name, json_bytes(d).hex()))


if __name__ == "__main__":
    main(sys.stdout)
