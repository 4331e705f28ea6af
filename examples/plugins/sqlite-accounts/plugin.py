#!/usr/bin/env python3
"""sqlite-accounts: a lessor external plugin (plugins/PROTOCOL.md, version 1).

The vendor is a table of accounts in a local SQLite file, as a small
application might keep its users. Each lease gets one account, named
`<prefix><lease id>`, with a random 256-bit password that is stored only as a
salted PBKDF2-HMAC-SHA256 hash. Revoking deletes the row. Standard library
only.

lessor starts this program and writes one JSON-RPC 2.0 request per line on
its stdin; it answers one line per request on stdout. Requests are handled on
a small thread pool, so answers may come out of order (lessor matches them by
id). stderr is the log: never write a password there.
"""

import base64
import datetime
import hashlib
import json
import os
import secrets
import sqlite3
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

PROTOCOL_VERSION = 1
KIND = "sqlite-accounts"

RETRYABLE, PERMANENT, INVALID, MISCONFIGURED, UNSUPPORTED = -32001, -32002, -32003, -32004, -32005
INVALID_PARAMS, METHOD_NOT_FOUND, PARSE_ERROR = -32602, -32601, -32700

SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    name        TEXT PRIMARY KEY,
    salt        BLOB NOT NULL,
    hash        BLOB NOT NULL,
    iterations  INTEGER NOT NULL,
    role        TEXT NOT NULL,
    scopes      TEXT NOT NULL,
    expires_at  TEXT NOT NULL,
    created_at  TEXT NOT NULL
)
"""


class PluginError(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


def log(msg):
    try:
        sys.stderr.write(msg + "\n")
        sys.stderr.flush()
    except OSError:
        pass  # lessor is gone; nobody reads the log


class Accounts:
    def __init__(self):
        self.path = None
        self.prefix = "lessor_"
        self.iterations = 600_000
        self.roles = {}

    def connect(self):
        db = sqlite3.connect(self.path, timeout=5, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        return db

    # -- methods ---------------------------------------------------------

    def initialize(self, p):
        if p.get("protocol_version") != PROTOCOL_VERSION:
            raise PluginError(MISCONFIGURED, f"this plugin speaks protocol {PROTOCOL_VERSION}, lessor sent {p.get('protocol_version')!r}")
        cfg = p.get("config") or {}
        path = cfg.get("database")
        if not isinstance(path, str) or not path:
            raise PluginError(MISCONFIGURED, "`config.database` (the SQLite file) is required")
        prefix = cfg.get("prefix", "lessor_")
        if not (isinstance(prefix, str) and 1 <= len(prefix) <= 16 and all(c.isalnum() or c == "_" for c in prefix)):
            raise PluginError(MISCONFIGURED, "`config.prefix` must be 1-16 characters of a-z, 0-9, `_`")
        iterations = cfg.get("pbkdf2_iterations", 600_000)
        if not (isinstance(iterations, int) and 1_000 <= iterations <= 10_000_000):
            raise PluginError(MISCONFIGURED, "`config.pbkdf2_iterations` must be an integer from 1000 to 10000000")
        unknown = sorted(set(cfg) - {"database", "prefix", "pbkdf2_iterations"})
        if unknown:
            raise PluginError(MISCONFIGURED, f"unknown field `config.{unknown[0]}`")
        self.path, self.prefix, self.iterations = os.path.abspath(path), prefix, iterations
        self.roles = {r["name"]: r for r in p.get("roles", [])}
        try:
            db = self.connect()
            db.execute(SCHEMA)
            db.close()
        except sqlite3.Error as e:
            raise PluginError(MISCONFIGURED, f"cannot open {self.path}: {e}")
        return {
            "protocol_version": PROTOCOL_VERSION,
            "kind": KIND,
            "capabilities": {
                "can_renew": True,
                "can_revoke": True,
                "revocation": {"mode": "immediate"},
                "can_list": True,
                "manages_root": False,
            },
        }

    def name_of(self, lease_id):
        if not isinstance(lease_id, str) or not lease_id or len(lease_id) > 64 or not all(c.isalnum() or c in "_-" for c in lease_id):
            raise PluginError(INVALID_PARAMS, "`lease_id` must be 1-64 characters of a-z, 0-9, `_`, `-`")
        return self.prefix + lease_id

    def validate(self, _p):
        if not os.access(self.path, os.W_OK):
            raise PluginError(RETRYABLE, f"{self.path} is not writable by this process")
        try:
            db = self.connect()
            db.execute("BEGIN IMMEDIATE")  # takes the write lock: the file is writable
            (n,) = db.execute("SELECT count(*) FROM accounts WHERE substr(name, 1, ?) = ?", (len(self.prefix), self.prefix)).fetchone()
            db.execute("ROLLBACK")
            db.close()
        except sqlite3.Error as e:
            raise PluginError(RETRYABLE, f"{self.path}: {e}")
        return {
            "identity": f"sqlite:{self.path}",
            "details": {"accounts": str(n), "sqlite_version": sqlite3.sqlite_version, "prefix": self.prefix},
            "warnings": [],
        }

    def issue(self, p):
        name = self.name_of(p.get("lease_id"))
        role = p.get("role")
        if role not in self.roles:
            raise PluginError(INVALID, f"role `{role}` is not configured for this connection")
        expires_at = p.get("expires_at")
        parse_time(expires_at, "expires_at")
        password = secrets.token_urlsafe(32)  # 256 bits
        salt = secrets.token_bytes(16)
        digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, self.iterations)
        now = datetime.datetime.now(datetime.timezone.utc).isoformat()
        try:
            db = self.connect()
            db.execute(
                "INSERT INTO accounts (name, salt, hash, iterations, role, scopes, expires_at, created_at) VALUES (?,?,?,?,?,?,?,?)",
                (name, salt, digest, self.iterations, role, " ".join(p.get("scopes") or []), expires_at, now),
            )
            db.close()
        except sqlite3.IntegrityError:
            raise PluginError(PERMANENT, f"account `{name}` already exists")
        except sqlite3.OperationalError as e:
            raise PluginError(RETRYABLE, f"{self.path}: {e}")
        fault()
        log(f"created account {name} for role {role}")
        return {
            "handle": {"name": name},
            "public": {"username": name, "database": self.path},
            "secret": {"password": password},
            "expires_at": expires_at,
            "root_version": None,
        }

    def renew(self, p):
        lease = p.get("lease") or {}
        name = self.name_of(lease.get("lease_id"))
        expires_at = p.get("expires_at")
        parse_time(expires_at, "expires_at")
        try:
            db = self.connect()
            n = db.execute("UPDATE accounts SET expires_at = ? WHERE name = ?", (expires_at, name)).rowcount
            db.close()
        except sqlite3.OperationalError as e:
            raise PluginError(RETRYABLE, f"{self.path}: {e}")
        if n == 0:
            raise PluginError(PERMANENT, f"account `{name}` does not exist (revoked?)")
        return {"expires_at": expires_at}

    def revoke(self, p):
        # The name comes from the lease id alone: a lease left pending by a
        # crash (no handle) is revoked the same way. Gone already = revoked.
        name = self.name_of(p.get("lease_id"))
        try:
            db = self.connect()
            n = db.execute("DELETE FROM accounts WHERE name = ?", (name,)).rowcount
            db.close()
        except sqlite3.OperationalError as e:
            raise PluginError(RETRYABLE, f"{self.path}: {e}")
        if n:
            log(f"deleted account {name}")
        return {}

    def list(self, p):
        # One page, names ascending (SQLite's BINARY collation: byte order).
        after, limit = p.get("after") or "", p.get("limit", 1000)
        if not isinstance(after, str) or not isinstance(limit, int) or limit < 0:
            raise PluginError(INVALID_PARAMS, "`after` must be a string or null and `limit` a non-negative integer")
        try:
            db = self.connect()
            rows = db.execute(
                "SELECT name FROM accounts WHERE substr(name, 1, ?) = ? AND name > ? ORDER BY name LIMIT ?",
                (len(self.prefix), self.prefix, after, limit),
            ).fetchall()
            db.close()
        except sqlite3.OperationalError as e:
            raise PluginError(RETRYABLE, f"{self.path}: {e}")
        return {"objects": [{"name": n, "lease_id": lease_of(n[len(self.prefix):])} for (n,) in rows]}


def lease_of(rest):
    ok = 0 < len(rest) <= 64 and all(c.isalnum() or c in "_-" for c in rest)
    return rest if ok else None


def parse_time(value, field):
    try:
        if not isinstance(value, str):
            raise ValueError
        datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise PluginError(INVALID_PARAMS, f"`{field}` is not an RFC 3339 time")


def fault():
    """Fault injection for lessor's tests: when $SQLITE_ACCOUNTS_FAULT_FILE
    names an existing file, the issue that just committed its account reads
    the file, removes it, and then crashes (`crash`) or hangs (`hang`)
    instead of answering."""
    path = os.environ.get("SQLITE_ACCOUNTS_FAULT_FILE")
    if not path:
        return
    try:
        with open(path) as f:
            what = f.read().strip()
        os.remove(path)
    except FileNotFoundError:
        return
    log(f"fault injection: {what} after insert")
    if what == "crash":
        os._exit(3)
    if what == "hang":
        threading.Event().wait(3600)


def main():
    plugin = Accounts()
    out_lock = threading.Lock()
    pool = ThreadPoolExecutor(max_workers=8)
    initialized = threading.Event()
    methods = {
        "validate": plugin.validate,
        "issue": plugin.issue,
        "renew": plugin.renew,
        "revoke": plugin.revoke,
        "list": plugin.list,
    }

    def send(msg):
        line = json.dumps(msg, separators=(",", ":")) + "\n"
        with out_lock:
            try:
                sys.stdout.write(line)
                sys.stdout.flush()
            except OSError:
                os._exit(0)  # lessor is gone

    def handle(req):
        rid, method, params = req.get("id"), req.get("method"), req.get("params") or {}
        try:
            if method == "initialize":
                result = plugin.initialize(params)
                initialized.set()
            elif not initialized.is_set():
                raise PluginError(INVALID_PARAMS, "`initialize` must come first")
            elif method in methods:
                result = methods[method](params)
            elif method in ("install_root", "validate_root", "remove_root"):
                raise PluginError(UNSUPPORTED, "this plugin has no root credential")
            else:
                raise PluginError(METHOD_NOT_FOUND, f"unknown method `{method}`")
            send({"jsonrpc": "2.0", "id": rid, "result": result})
        except PluginError as e:
            send({"jsonrpc": "2.0", "id": rid, "error": {"code": e.code, "message": e.message}})
        except Exception as e:  # a bug here: say what, not the request
            log(f"{method}: internal error: {type(e).__name__}: {e}")
            send({"jsonrpc": "2.0", "id": rid, "error": {"code": -32603, "message": f"{type(e).__name__}"}})

    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
        except ValueError:
            send({"jsonrpc": "2.0", "id": None, "error": {"code": PARSE_ERROR, "message": "not JSON"}})
            continue
        method = req.get("method")
        if method == "shutdown":
            pool.shutdown(wait=True)  # finish what is in flight, then answer
            send({"jsonrpc": "2.0", "id": req.get("id"), "result": {}})
            return
        if method == "initialize":
            handle(req)  # before anything else is read
        else:
            pool.submit(handle, req)
    # End of input without `shutdown`: lessor is gone (killed, crashed).
    # Nobody can receive an answer any more; exit now, even with a request
    # in flight. An account committed meanwhile belongs to a lease lessor
    # recorded as pending, which it revokes when it starts again.
    log("end of input: exiting")
    os._exit(0)


if __name__ == "__main__":
    main()
