//! PostgreSQL role issuance and revocation: lessor over HTTP vs the same
//! statements sent straight to the server, at the same concurrency (`cargo
//! bench --bench postgres`). Not a test: it reports numbers and their ratio.
//!
//! lessor's path per issue: a fresh workload JWT verified, policy decided,
//! the lease written pending then active (SQLite, durable), and in one
//! PostgreSQL transaction CREATE ROLE ... PASSWORD <SCRAM verifier> VALID
//! UNTIL ... + GRANT orders_reader (a group role holding SELECT on orders).
//! The raw path runs that same transaction, with the verifier made by the
//! client per role, and once more with a plaintext password (the server
//! hashes it; lessor hashes client-side instead), on one connection per
//! client. Granting a group role (not object privileges) keeps concurrent
//! transactions from conflicting on one ACL row ("tuple concurrently
//! updated"), for both.
//!
//! Per revocation: `DELETE /v1/leases/{id}`, the lease written, and the
//! plugin's sequence (see `plugins/postgres/src/plugin/revoke.rs`): in one
//! transaction who the admin is, the lease's roles by name, `NOLOGIN`;
//! the role's sessions ended; in a second transaction `REASSIGN OWNED`,
//! `DROP OWNED`, `DROP ROLE`; sessions ended again and the role checked
//! gone. The raw baselines: `DROP ROLE` alone, and that same sequence.
//!
//! CPU per operation is read from `/proc` for this process (the daemon
//! runs in it, with the HTTP clients) and for the server (the postmaster
//! and its backends). Two layouts, each reported on its own: every process
//! on every CPU, then this process on half of the CPUs and the server on
//! the other half (as when the database runs on hosts of its own; see
//! `benches/redis.rs`).

#[path = "support/mod.rs"]
mod support;
use support::{copy_dir, layout_tag, layouts, lessor_issue, lessor_revoke, loadavg, median_run, print_run, print_stages, scramble, stages, with_children, Layout, Meter, Run};

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lessor::config::Config;
use lessor::identity::dev::{jwks_path, DevIssuer, DEV_AUDIENCE, DEV_ISSUER};
use lessor_postgres::testkit::TempPostgres;
use secrecy::ExposeSecret;
use sqlx::postgres::PgPoolOptions;

const CLIENTS: usize = 8;
const N: usize = 1000;
const ROUNDS: usize = 3;

/// The `i`th raw role name of `round`: as long as lessor's
/// (`lessor_<role>_<repository>_<32 hex>`) and, like lessor's (whose end is
/// the random lease id), in no particular order: names made in sorted order
/// would all go to the rightmost page of `pg_authid`'s name index, which 8
/// concurrent clients then contend for (see `benches/mysql.rs` on what the
/// order does to MariaDB).
fn raw_name(tag: &str, round: usize, i: usize) -> String {
    let h = scramble(round, i);
    format!("rawbch_{tag}_svc{}_{h:032x}", h % 1000)
}

/// How a raw run treats each role.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Raw {
    /// Creates it with a SCRAM verifier the client makes (lessor's statement).
    IssueVerifier,
    /// Creates it with a plaintext password the server hashes.
    IssuePlain,
    /// `DROP ROLE` alone.
    DropOnly,
    /// The plugin's revocation sequence, statement for statement.
    Revoke,
}

/// `CLIENTS` clients with one connection each run `N` roles named
/// `raw_name(tag, round, i)` through `what`.
async fn raw(pg: &TempPostgres, pid: &str, what: Raw, tag: &str, round: usize) -> Run {
    let pool = PgPoolOptions::new()
        .min_connections(CLIENTS as u32)
        .max_connections(CLIENTS as u32)
        .connect(&pg.dsn("postgres", pg.superuser_password(), "app"))
        .await
        .expect("connect");
    let mut conns = Vec::new();
    for _ in 0..CLIENTS {
        conns.push(pool.acquire().await.expect("acquire"));
    }
    let next = Arc::new(AtomicUsize::new(0));
    let meter = Meter::start(&[pid]);
    let mut set = tokio::task::JoinSet::new();
    for mut conn in conns {
        let (next, tag) = (next.clone(), tag.to_owned());
        set.spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= N {
                    break;
                }
                let t = Instant::now();
                let name = raw_name(&tag, round, i);
                match what {
                    Raw::IssueVerifier | Raw::IssuePlain => {
                        let pw = hex::encode(rand::random::<[u8; 32]>());
                        let pw = if what == Raw::IssueVerifier {
                            tokio::task::spawn_blocking(move || lessor_postgres::scram::verifier(pw.as_bytes()).expect("verifier"))
                                .await
                                .expect("hash")
                        } else {
                            pw
                        };
                        let sql = format!(
                            "BEGIN; CREATE ROLE \"{name}\" LOGIN PASSWORD '{pw}' VALID UNTIL '2099-01-01T00:00:00Z'; \
                             GRANT orders_reader TO \"{name}\"; COMMIT"
                        );
                        // One simple query, as the plugin sends its script.
                        sqlx::Executor::execute(&mut *conn, sql.as_str()).await.expect("create role");
                    }
                    Raw::DropOnly => {
                        let sql = format!("DROP ROLE \"{name}\"");
                        sqlx::Executor::execute(&mut *conn, sql.as_str()).await.expect("drop role");
                    }
                    Raw::Revoke => raw_revoke(&mut conn, &name).await,
                }
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            lat
        });
    }
    let mut lat = Vec::new();
    while let Some(r) = set.join_next().await {
        lat.extend(r.expect("client"));
    }
    let run = meter.stop(N, lat);
    pool.close().await;
    run
}

/// The plugin's revocation of one role (a superuser admin, nothing owned),
/// the same statements in the same round trips.
async fn raw_revoke(conn: &mut sqlx::PgConnection, name: &str) {
    use sqlx::Row;
    // `BEGIN` and `COMMIT` as simple queries, as `Connection::begin` sends
    // them; each other statement unprepared, as the plugin's `exec`.
    sqlx::Executor::execute(&mut *conn, "BEGIN").await.expect("begin");
    let me = sqlx::query("SELECT current_user::text, COALESCE((SELECT rolsuper FROM pg_roles WHERE rolname = current_user), false)")
        .fetch_one(&mut *conn)
        .await
        .expect("whoami");
    let admin: String = me.try_get(0).expect("admin");
    let suffix = name.rsplit_once('_').map(|(_, s)| s).unwrap_or(name);
    let found = sqlx::query("SELECT rolname::text, oid::int8 FROM pg_roles WHERE rolname = $1 OR rolname LIKE $2 ORDER BY rolname")
        .bind(name)
        .bind(format!("rawbch\\_%\\_{suffix}"))
        .fetch_all(&mut *conn)
        .await
        .expect("find");
    let oid: i64 = found.first().expect("the role").try_get(1).expect("oid");
    let nologin = format!("ALTER ROLE \"{name}\" NOLOGIN");
    sqlx::query(&nologin).persistent(false).execute(&mut *conn).await.expect("nologin");
    sqlx::Executor::execute(&mut *conn, "COMMIT").await.expect("commit");
    let terminate = "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))::int8 FROM pg_stat_activity \
                     WHERE usesysid::int8 = $1 AND pid <> pg_backend_pid()";
    let _: i64 = sqlx::query_scalar(terminate).bind(oid).fetch_one(&mut *conn).await.expect("sessions");
    sqlx::Executor::execute(&mut *conn, "BEGIN").await.expect("begin");
    for sql in [format!("REASSIGN OWNED BY \"{name}\" TO \"{admin}\""), format!("DROP OWNED BY \"{name}\""), format!("DROP ROLE \"{name}\"")] {
        sqlx::query(&sql).persistent(false).execute(&mut *conn).await.expect("drop");
    }
    sqlx::Executor::execute(&mut *conn, "COMMIT").await.expect("commit");
    let _: i64 = sqlx::query_scalar(terminate).bind(oid).fetch_one(&mut *conn).await.expect("sessions");
    let gone = sqlx::query("SELECT 1 FROM pg_roles WHERE oid::int8 = $1").bind(oid).fetch_optional(&mut *conn).await.expect("gone");
    assert!(gone.is_none());
}

fn main() {
    let pg = TempPostgres::start().unwrap_or_else(|e| panic!("{e}"));
    pg.psql("postgres", "CREATE DATABASE app").expect("create db");
    pg.psql("app", "CREATE TABLE orders (id int); CREATE ROLE orders_reader; GRANT SELECT ON orders TO orders_reader")
        .expect("create table");
    let pid_file = std::fs::read_to_string(pg.dir().join("data/postmaster.pid")).expect("postmaster.pid");
    let pid = pid_file.lines().next().expect("postmaster pid").trim().to_owned();
    for layout in layouts() {
        // Pinned before lessor's runtime starts: its workers (one per CPU
        // it may use) and every thread it starts keep to the layout's CPUs;
        // the server's later backends inherit the postmaster's.
        layout.apply(&with_children(&pid));
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(run(layout, &pg, &pid));
    }
    Layout::Shared.apply(&with_children(&pid));
}

/// A fresh lessor in front of the server, and the rounds of one layout.
async fn run(layout: Layout, pg: &TempPostgres, pid: &str) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"), &dir.join("policies"));
    std::fs::write(
        dir.join("policies/bench.cedar"),
        "@id(\"bench\")\npermit(principal, action == Lessor::Action::\"issue\", resource is Lessor::Role);\n",
    )
    .expect("policy");
    let dev = DevIssuer::load_or_create(dir).expect("dev issuer");
    std::fs::write(dir.join("pg.dsn"), pg.dsn("postgres", pg.superuser_password(), "app")).expect("dsn");
    let cfg = format!(
        r#"
listen = "127.0.0.1:0"
store = "sqlite://{db}"
data_dir = "{dir}"
policies = "{dir}/policies"
[quotas]
max_active_per_owner = 0
issues_per_minute_per_owner = 0
[issuers.dev]
issuer = "{DEV_ISSUER}"
jwks_file = "{jwks}"
audiences = ["{DEV_AUDIENCE}"]
algorithms = ["ES256"]
preset = "github-actions"
[scopes."orders.read"]
allows = "Read orders."
[connections.token]
plugin = "token"
[connections.token.roles.plain]
max_ttl = "1h"

[connections.pg]
plugin = "postgres"
[connections.pg.config]
dsn_file = "{dir}/pg.dsn"
pool_size = {CLIENTS}
[connections.pg.roles.app]
max_ttl = "1h"
scopes = ["orders.read"]
default_scopes = ["orders.read"]
[connections.pg.roles.app.config.grants]
"orders.read" = ["GRANT orders_reader TO {{{{name}}}}"]
"#,
        db = dir.join("lessor.db").display(),
        dir = dir.display(),
        jwks = jwks_path(dir).display(),
    );
    let cfg = Config::from_toml(&cfg).expect("config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let running = lessor::server::start(cfg, listener).await.expect("start");
    let url = format!("http://{}", running.addr);
    let admin_token = std::fs::read_to_string(dir.join("admin.token")).expect("admin token").trim().to_owned();
    // Fresh workload JWTs, minted before each timed run (the issuer signs
    // them, not lessor).
    let mint = |tag: &str, n: usize| -> Vec<String> {
        (0..n)
            .map(|i| {
                let claims = DevIssuer::github_claims(&format!("acme/{tag}{i}"), "refs/heads/main", None);
                dev.mint(claims, Duration::from_secs(600)).expect("mint").expose_secret().to_owned()
            })
            .collect()
    };
    // Warm-up: connections, JWKS, caches.
    let (_, ids) = lessor_issue(&url, &[pid], CLIENTS, "pg/app", mint("warm", CLIENTS * 4)).await;
    lessor_revoke(&url, &[pid], CLIENTS, &admin_token, ids).await;

    let stages0 = stages("postgres");
    // Three rounds, alternating raw and lessor, reporting medians: runs on
    // a shared 2-core machine vary by several percent.
    let (mut raw_v, mut raw_p, mut drop_only, mut raw_full, mut issues, mut revokes, mut tokens) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    let load_start = loadavg();
    let tag = layout_tag(layout);
    for round in 0..ROUNDS {
        raw_v.push(raw(pg, pid, Raw::IssueVerifier, &format!("{tag}v"), round).await);
        raw_full.push(raw(pg, pid, Raw::Revoke, &format!("{tag}v"), round).await);
        raw_p.push(raw(pg, pid, Raw::IssuePlain, &format!("{tag}p"), round).await);
        drop_only.push(raw(pg, pid, Raw::DropOnly, &format!("{tag}p"), round).await);
        let (issue, ids) = lessor_issue(&url, &[pid], CLIENTS, "pg/app", mint(&format!("svc{tag}{round}-"), N)).await;
        issues.push(issue);
        revokes.push(lessor_revoke(&url, &[pid], CLIENTS, &admin_token, ids).await);
        // The same path with a vendor that costs nothing (a lessor-signed
        // token): lessor's own share.
        tokens.push(lessor_issue(&url, &[pid], CLIENTS, "token/plain", mint(&format!("tok{tag}{round}-"), N)).await.0);
        println!("  (round {}: load average {})", round + 1, loadavg());
    }
    let left = pg.psql("app", "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'lessor!_%' ESCAPE '!' OR rolname LIKE 'rawbch!_%' ESCAPE '!'");
    assert_eq!(left.as_deref().map(str::trim), Ok("0"), "roles left after revocation");
    let m = |v: &[Run]| median_run(v);
    let (rv, rp, rd, rf, li, lr, lt) = (m(&raw_v), m(&raw_p), m(&drop_only), m(&raw_full), m(&issues), m(&revokes), m(&tokens));
    let line = |what: &str, r: &Run| print_run(what, r, "postgres");
    println!(
        "PostgreSQL roles, {CLIENTS} concurrent clients, {N} roles per run, median of {ROUNDS} runs, {}; load average {load_start} at the start, {} at the end",
        layout.describe(),
        loadavg()
    );
    line("raw issue (CREATE ROLE + GRANT, client's verifier)", &rv);
    line("raw issue, plaintext password (server hashes it)", &rp);
    line("lessor issue over HTTP (JWT, policy, lease, role)", &li);
    println!("  ratio lessor / raw issue: {:.2} (same statements), {:.2} (plaintext)", li.rate / rv.rate, li.rate / rp.rate);
    print_stages(&stages0, &stages("postgres"));
    line("raw revoke, DROP ROLE alone", &rd);
    line("raw revoke, nologin + sessions + drop + check", &rf);
    line("lessor revoke over HTTP (DELETE /v1/leases/id)", &lr);
    println!("  ratio lessor / raw revoke: {:.2} (DROP ROLE alone), {:.2} (same sequence)", lr.rate / rd.rate, lr.rate / rf.rate);
    line("lessor alone, token role (no vendor call)", &lt);
    running.shutdown().await;
}
