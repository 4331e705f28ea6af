use std::sync::Arc;
use std::time::Duration;

use lessor_plugin::secrecy::ExposeSecret;
use lessor_plugin::{Issued, LeaseId, LeaseRef, Plugin, PluginError, RenewRequest};
use sqlx::{Connection, MySqlConnection};
use serde_json::json;
use time::OffsetDateTime;

use crate::support::*;

fn lease(id: &LeaseId, role: &str, issued: Option<&Issued>) -> LeaseRef {
    LeaseRef {
        lease_id: id.clone(),
        role: role.into(),
        handle: issued.map(|i| i.handle.clone()),
        expires_at: OffsetDateTime::now_utc() + Duration::from_secs(600),
        root_version: None,
    }
}

async fn session(db: &Db, issued: &Issued) -> MySqlConnection {
    let dsn = db.db.dsn(
        &username(issued),
        issued.secret["password"].expose_secret(),
        "app",
    );
    MySqlConnection::connect(&dsn).await.unwrap()
}

each_server! {
    async fn revoke_locks_ends_open_sessions_and_drops_the_user(server) {
        let mut db = Db::start(server);
        let p = db.plugin().await;
        let id = lease_id();
        let issued = p.issue(request(&id, "orders", &["orders.read"], Duration::from_secs(600))).await.unwrap();
        // Two sessions the workload keeps open (one mid-transaction).
        let mut a = session(&db, &issued).await;
        let mut b = session(&db, &issued).await;
        // (Not a prepared statement: MySQL 8 prepares no BEGIN.)
        sqlx::raw_sql("BEGIN").execute(&mut b).await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM orders").fetch_one(&mut a).await.unwrap();
        assert_eq!(n, 1);
        let user = username(&issued);
        assert_eq!(db.sql(&format!("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = '{user}'")), "2");

        p.revoke(&lease(&id, "orders", Some(&issued))).await.unwrap();
        for c in [&mut a, &mut b] {
            let r: Result<i64, _> = sqlx::query_scalar("SELECT COUNT(*) FROM orders").fetch_one(c).await;
            assert!(r.is_err(), "a session of a revoked user still answers");
        }
        assert_eq!(db.sql(&format!("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = '{user}'")), "0");
        assert!(db.lease_users().is_empty());
        assert!(db.login(&issued, "SELECT 1").is_err());
        // Already gone: revoked.
        p.revoke(&lease(&id, "orders", Some(&issued))).await.unwrap();
        // Renewing it says so.
        let e = p
            .renew(RenewRequest { lease: lease(&id, "orders", Some(&issued)), expires_at: OffsetDateTime::now_utc() + Duration::from_secs(900) })
            .await
            .unwrap_err();
        assert!(matches!(&e, PluginError::Permanent(m) if m.contains("no longer exists")), "{e:?}");
    }
}

each_server! {
    /// On MariaDB a revocation with its handle is one round trip (lock, end
    /// sessions, drop, end sessions), counted by a proxy in front of the
    /// server (four before), and still ends an open session. MySQL lists
    /// the sessions it ends, so it takes more.
    async fn a_mariadb_revocation_is_one_round_trip_and_ends_open_sessions(server) {
        let mut db = Db::start(server);
        let (proxy, p) = db.plugin_behind_a_counter().await;
        for _ in 0..2 {
            let id = lease_id();
            let issued = p.issue(request(&id, "orders", &["orders.read"], Duration::from_secs(600))).await.unwrap();
            let mut open = session(&db, &issued).await;
            let before = proxy.commands();
            p.revoke(&lease(&id, "orders", Some(&issued))).await.unwrap();
            let sent = proxy.commands() - before;
            match server {
                lessor_mysql::testkit::Server::MariaDb => assert_eq!(sent, 1, "one round trip per revocation"),
                lessor_mysql::testkit::Server::Mysql8 => assert!(sent >= 4, "lock, listing, drop, listing: {sent}"),
            }
            let r: Result<i64, _> = sqlx::query_scalar("SELECT COUNT(*) FROM orders").fetch_one(&mut open).await;
            assert!(r.is_err(), "the open session ended");
        }
        assert!(db.lease_users().is_empty());
    }
}

each_server! {
    async fn a_user_of_another_lease_or_outside_the_prefix_is_never_touched(server) {
        let mut db = Db::start(server);
        let p = db.plugin().await;
        let mine = lease_id();
        let other = lease_id();
        let a = p.issue(request(&mine, "plain", &[], Duration::from_secs(600))).await.unwrap();
        let b = p.issue(request(&other, "plain", &[], Duration::from_secs(600))).await.unwrap();
        // A handle pointing at another lease's user (or an outside account) is ignored.
        let mut forged = lease(&mine, "plain", Some(&a));
        forged.handle = Some(serde_json::json!({"user": "canary", "host": "%"}));
        p.revoke(&forged).await.unwrap();
        assert_eq!(db.sql("SELECT COUNT(*) FROM mysql.user WHERE User = 'canary'"), "1");
        forged.handle = Some(b.handle.clone());
        p.revoke(&forged).await.unwrap();
        assert_eq!(db.lease_users(), vec![username(&b)]);
        assert!(db.login(&a, "SELECT 1").is_err() && db.login(&b, "SELECT 1").is_ok());
    }
}

each_server! {
    /// With its handle, a revocation reads no account table: lock, the
    /// sessions, drop, the sessions again (on MariaDB `KILL CONNECTION
    /// USER`, no SELECT; on MySQL two of `information_schema.PROCESSLIST`).
    /// Without one (a lease left pending), the lease's accounts are looked
    /// up by name first.
    async fn a_revocation_with_its_handle_looks_nothing_up(server) {
        let mut db = Db::start(server);
        let p = db.plugin().await;
        let read = |db: &Db| -> u64 {
            db.sql("SHOW GLOBAL STATUS LIKE 'Com_select'").split('\t').nth(1).unwrap().trim().parse().unwrap()
        };
        // What a status read itself counts (MySQL's client selects its
        // version comment on connect).
        let own = {
            let a = read(&db);
            read(&db) - a
        };
        // SELECTs since `before`, the reads' own left out.
        let since = |db: &Db, before: u64| read(db) - before - own;
        let id = lease_id();
        let issued = p.issue(request(&id, "plain", &[], Duration::from_secs(600))).await.unwrap();
        let before = read(&db);
        p.revoke(&lease(&id, "plain", Some(&issued))).await.unwrap();
        let listings = if matches!(server, lessor_mysql::testkit::Server::MariaDb) { 0 } else { 2 };
        assert_eq!(since(&db, before), listings, "the session listings only");
        assert!(db.login(&issued, "SELECT 1").is_err());

        let id = lease_id();
        let issued = p.issue(request(&id, "plain", &[], Duration::from_secs(600))).await.unwrap();
        let before = read(&db);
        p.revoke(&lease(&id, "plain", None)).await.unwrap();
        assert_eq!(since(&db, before), listings + 1, "the lookup by name, then the session listings");
        assert!(db.login(&issued, "SELECT 1").is_err());
        assert!(db.lease_users().is_empty(), "left: {:?}", db.lease_users());
    }
}

each_server! {
    /// The handle's account is looked up by key; when it is not there (moved
    /// to another host behind lessor's back), the lease's accounts are still
    /// found by name and dropped.
    async fn an_account_moved_away_from_its_handle_is_still_found_and_dropped(server) {
        let mut db = Db::start(server);
        let p = db.plugin().await;
        let id = lease_id();
        let issued = p.issue(request(&id, "plain", &[], Duration::from_secs(600))).await.unwrap();
        let user = username(&issued);
        assert_eq!(issued.handle["host"], "%");
        db.sql(&format!("RENAME USER '{user}'@'%' TO '{user}'@'localhost'"));
        assert_eq!(db.sql(&format!("SELECT Host FROM mysql.user WHERE User = '{user}'")), "localhost");
        p.revoke(&lease(&id, "plain", Some(&issued))).await.unwrap();
        assert!(db.lease_users().is_empty(), "left: {:?}", db.lease_users());
    }
}

each_server! {
    /// Workloads hanging up mid-issue (the request future dropped at any
    /// point) leave nothing that revocation by lease id cannot find.
    async fn clients_hanging_up_mid_issue_leave_nothing_behind(server) {
        let mut db = Db::start(server);
        let p = db.plugin().await;
        let mut ids = Vec::new();
        for i in 0..40u64 {
            let id = lease_id();
            ids.push(id.clone());
            let fut = p.issue(request(&id, "orders", &["orders.read"], Duration::from_secs(600)));
            // Cut off after 0..~20 ms: before, during and after the statements.
            let _ = tokio::time::timeout(Duration::from_micros(i * 500), fut).await;
        }
        // What the core does with the pending leases: revoke each by id alone.
        for id in &ids {
            p.revoke(&lease(id, "orders", None)).await.unwrap();
        }
        assert!(db.lease_users().is_empty(), "orphans: {:?}", db.lease_users());
    }
}

each_server! {
    async fn server_down_during_revoke_is_retryable_and_revoke_finishes_after(server) {
        let mut db = Db::start(server);
        let p = db.plugin().await;
        let id = lease_id();
        let issued = p.issue(request(&id, "orders", &["orders.read"], Duration::from_secs(600))).await.unwrap();
        db.db.stop().unwrap();
        let e = p.revoke(&lease(&id, "orders", Some(&issued))).await.unwrap_err();
        assert!(e.is_retryable(), "{e:?}");
        assert!(e.to_string().contains(&format!("127.0.0.1:{}", db.db.port())), "{e}");
        let e = p.issue(request(&lease_id(), "orders", &["orders.read"], Duration::from_secs(600))).await.unwrap_err();
        assert!(e.is_retryable(), "{e:?}");
        db.db.restart().unwrap();
        assert!(db.login(&issued, "SELECT 1").is_ok(), "the user outlives the outage");
        p.revoke(&lease(&id, "orders", Some(&issued))).await.unwrap();
        assert!(db.lease_users().is_empty());
    }
}

each_server! {
    async fn renew_keeps_the_user_working(server) {
        let mut db = Db::start(server);
        let p: std::sync::Arc<dyn Plugin> = db.plugin().await;
        let id = lease_id();
        let issued = p.issue(request(&id, "orders", &["orders.read"], Duration::from_secs(60))).await.unwrap();
        let later = OffsetDateTime::now_utc() + Duration::from_secs(1800);
        let got = p.renew(RenewRequest { lease: lease(&id, "orders", Some(&issued)), expires_at: later }).await.unwrap();
        assert_eq!(got, later);
        assert_eq!(db.login(&issued, "SELECT id FROM app.orders").unwrap(), "1");
    }
}

each_server! {
    /// A pooled admin connection is reused with no round trip of its own
    /// (sqlx's pool pinged each one it took back: one `COM_PING` per issue
    /// and per revocation); one idle for over a second is pinged before
    /// use; one left by a failed operation is closed, not reused.
    async fn pooled_connections_are_reused_without_a_ping_and_closed_after_a_failure(server) {
        let mut db = Db::start(server);
        let c = db.connection(&db.db.admin_dsn(), json!({"pool_size": 2}));
        let mut specs = roles();
        specs.push(role("broken", &["x"], json!({"grants": {"x": ["GRANT SELECT ON app.missing_table TO {{name}}"]}})));
        let p = build(c, specs).await;
        let status = |db: &Db, name: &str| -> u64 {
            db.sql(&format!("SHOW GLOBAL STATUS LIKE '{name}'")).split('\t').nth(1).unwrap().trim().parse().unwrap()
        };
        let issue = |p: Arc<dyn Plugin>| async move {
            let id = lease_id();
            let issued = p.issue(request(&id, "orders", &["orders.read"], Duration::from_secs(600))).await.unwrap();
            (id, issued)
        };
        // Warm: one connection open.
        let (id, issued) = issue(p.clone()).await;
        p.revoke(&lease(&id, "orders", Some(&issued))).await.unwrap();
        let (pings, connections) = (status(&db, "Com_admin_commands"), status(&db, "Connections"));
        for _ in 0..20 {
            let (id, issued) = issue(p.clone()).await;
            p.revoke(&lease(&id, "orders", Some(&issued))).await.unwrap();
        }
        // (Each status read is a client connection of its own.)
        assert_eq!(status(&db, "Connections") - connections, 1, "40 operations opened no connection");
        assert_eq!(status(&db, "Com_admin_commands") - pings, 0, "40 operations sent no ping");
        assert!(db.lease_users().is_empty());

        // Idle for over a second: pinged once, then used.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let pings = status(&db, "Com_admin_commands");
        let (id, issued) = issue(p.clone()).await;
        assert_eq!(status(&db, "Com_admin_commands") - pings, 1, "an idle connection is checked before use");

        // A failed operation's connection is closed: the next one opens anew.
        let e = p.issue(request(&lease_id(), "broken", &["x"], Duration::from_secs(600))).await.unwrap_err();
        assert!(e.to_string().contains("missing_table"), "{e}");
        let connections = status(&db, "Connections");
        p.revoke(&lease(&id, "orders", Some(&issued))).await.unwrap();
        // The status read, then a new connection for the revocation.
        assert_eq!(status(&db, "Connections") - connections, 2, "the failed issue's connection was not reused");
        assert!(db.lease_users().is_empty(), "{:?}", db.lease_users());
    }
}
