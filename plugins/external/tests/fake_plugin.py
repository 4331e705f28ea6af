#!/usr/bin/env python3
"""A deliberately misbehaving external plugin for lessor-external's protocol
tests. argv[1] picks the misbehaviour; everything else follows the
protocol. Standard library only."""
import json
import os
import sys
import time

mode = sys.argv[1]

# "shifty": each start is logged (FAKE_STARTS: one time per line); while the
# file FAKE_SHIFT exists the handshake names another revocation mode.
shifted = False
if mode == "shifty":
    with open(os.environ["FAKE_STARTS"], "a") as f:
        f.write(f"{time.monotonic()}\n")
    shifted = os.path.exists(os.environ["FAKE_SHIFT"])


def send(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def answer(rid, result):
    send({"jsonrpc": "2.0", "id": rid, "result": result})


for line in sys.stdin:
    req = json.loads(line)
    rid, method, params = req.get("id"), req["method"], req.get("params") or {}
    sys.stderr.write(f"got {method}\n")
    sys.stderr.flush()
    if method == "initialize":
        answer(rid, {
            "protocol_version": 2 if mode == "v2" else 1,
            "kind": "fake",
            "capabilities": {"can_renew": False, "can_revoke": True,
                             "revocation": {"mode": "published", "via": "a test list", "max_delay_seconds": 5}
                             if mode == "root" else {"mode": "published", "via": "a shifted list", "max_delay_seconds": 9} if shifted
                             else {"mode": "immediate"},
                             "manages_root": mode == "root",
                             **({"root_describes": "the fake vendor's admin password"} if mode == "root" else {})},
        })
    elif method == "validate":
        answer(rid, {"identity": f"fake pid {os.getpid()}"})
    elif method == "install_root":
        with open(os.environ["FAKE_ROOT_LOG"], "a") as f:
            f.write(f"{params['root_version']} {str(params['active']).lower()}\n")
        answer(rid, {})
    elif method == "shutdown":
        if mode == "deaf":
            continue  # never answers and never exits
        answer(rid, {})
        sys.exit(0)
    elif method == "issue":
        role = params["role"]
        if mode == "garbage":
            sys.stdout.write("Traceback (most recent call last): password=hunter2\n")
            sys.stdout.flush()
        elif mode == "long":
            sys.stdout.write("{" + " " * (2 << 20) + "}\n")
            sys.stdout.flush()
        elif mode == "slow":
            time.sleep(30)
        elif role.startswith("code"):
            send({"jsonrpc": "2.0", "id": rid, "error": {"code": int(role[4:]), "message": f"refused by {role}"}})
        else:
            answer(rid, {"handle": None, "secret": {"password": "hunter2-secret"}, "expires_at": "2999-01-01T00:00:00Z"})
    else:
        send({"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": "no"}})
if mode == "deaf":
    time.sleep(3600)
