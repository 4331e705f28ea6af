use std::time::Duration;

use lessor_plugin::PluginError;
use serde_json::json;

use lessor_mysql::testkit::Server;

use crate::support::*;

each_server! {
    async fn a_login_can_select_and_nothing_else(server) {
        let mut db = Db::start(server);
        let p = db.plugin().await;
        let issued = p.issue(request(&lease_id(), "orders", &["orders.read"], Duration::from_secs(600))).await.unwrap();
        assert_eq!(db.login(&issued, "SELECT id FROM app.orders").unwrap(), "1");
        let role = match server {
            Server::MariaDb => "orders_reader",
            Server::Mysql8 => "`orders_reader`@`%`",
        };
        assert_eq!(db.login(&issued, "SELECT CURRENT_ROLE()").unwrap(), role);
        for denied in [
            "INSERT INTO app.orders VALUES (2)",
            "UPDATE app.orders SET id = 3",
            "DELETE FROM app.orders",
            "SELECT * FROM app.invoices",
            "CREATE TABLE app.x (id int)",
            "DROP TABLE app.orders",
            "CREATE USER evil@'%'",
            "GRANT SELECT ON app.invoices TO CURRENT_USER",
            "SET ROLE invoices_reader",
        ] {
            let e = db.login(&issued, denied).unwrap_err();
            // (MariaDB: "Invalid role"; MySQL: "... is not granted to ...".)
            assert!(e.contains("denied") || e.contains("Invalid role") || e.contains("is not granted to"), "{denied}: {e}");
        }
        assert_eq!(db.sql("SELECT COUNT(*) FROM app.orders"), "1");
        // The DSN names the role's database and works as it is.
        assert!(issued.public["database"] == "app" && issued.public["account_host"] == "%");
        // A user with no scopes gets no privileges at all.
        let plain = p.issue(request(&lease_id(), "plain", &[], Duration::from_secs(600))).await.unwrap();
        assert!(db.login(&plain, "SELECT id FROM app.orders").is_err());
        assert_eq!(db.login(&plain, "SELECT 1").unwrap(), "1");
    }
}

each_server! {
    /// MariaDB: `<prefix>_<readable>_<32 hex>` in at most 80 characters.
    /// MySQL: `<prefix>_<22 base-62 digits>` in at most 32. Either way the
    /// whole lease id, which the name maps back to.
    async fn names_carry_the_whole_lease_id_within_the_servers_limit(server) {
        let mut db = Db::start(server);
        let long_role = "a-very-long-role-name-".repeat(4);
        let c = db.connection(&db.db.admin_dsn(), json!({"user_prefix": "eightbyt"}));
        let p = build(c, vec![role(&long_role, &[], json!({"host": "127.0.0.%"}))]).await;
        let id = lease_id();
        let mut req = request(&id, &long_role, &[], Duration::from_secs(600));
        req.workload.attributes.insert("repository".into(), format!("org/{}", "Repository.Name".repeat(8)));
        let issued = p.issue(req).await.unwrap();
        let name = username(&issued);
        let hex = &id.as_str()[4..];
        match server {
            Server::MariaDb => {
                assert_eq!(name.len(), 80, "{name}");
                assert!(name.starts_with("eightbyt_a_very_long_role_name_") && name.ends_with(&format!("_{hex}")), "{name}");
            }
            Server::Mysql8 => {
                assert_eq!(name.len(), "eightbyt_".len() + 22, "{name}");
                assert_eq!(lessor_mysql::mysql_lease_of("eightbyt", &name), Some(id.clone()), "{name}");
            }
        }
        assert_eq!(db.sql(&format!("SELECT Host FROM mysql.user WHERE User = '{name}'")), "127.0.0.%");
        assert_eq!(db.login(&issued, "SELECT 1").unwrap(), "1");
        p.revoke(&lessor_plugin::LeaseRef {
            lease_id: id,
            role: long_role.clone(),
            handle: None,
            expires_at: issued.expires_at,
            root_version: None,
        })
        .await
        .unwrap();
        assert!(db.db.users_with_prefix("eightbyt").unwrap().is_empty());
    }
}

each_server! {
    /// The server gets an authentication string, never the password:
    /// MariaDB its `mysql_native_password` hash, MySQL 8 its
    /// `caching_sha2_password` one. On MySQL the general log runs raw
    /// (`log_raw`: statements as received, passwords not masked), so a
    /// password sent in a statement would be there. The account logs in.
    async fn the_password_never_reaches_the_server(server) {
        let mut db = Db::start(server);
        if server == Server::Mysql8 {
            db.sql("SET GLOBAL log_raw = ON");
        }
        db.sql("SET GLOBAL general_log_file = 'general.log'; SET GLOBAL general_log = 1");
        let p = db.plugin().await;
        let issued = p.issue(request(&lease_id(), "orders", &["orders.read"], Duration::from_secs(600))).await.unwrap();
        let pw = lessor_plugin::secrecy::ExposeSecret::expose_secret(&issued.secret["password"]).to_owned();
        assert_eq!(pw.len(), 43, "256 bits, base64url");
        assert_eq!(db.login(&issued, "SELECT 1").unwrap(), "1");
        db.sql("SET GLOBAL general_log = 0");
        let log = std::fs::read_to_string(db.db.dir().join("data/general.log")).unwrap();
        assert!(!log.contains(&pw), "the password is not in the server's general log");
        let create = log.lines().find(|l| l.contains("CREATE USER")).expect("the log holds the statements");
        match server {
            Server::MariaDb => assert!(create.contains("IDENTIFIED BY PASSWORD '*"), "{create}"),
            Server::Mysql8 => assert!(create.contains("IDENTIFIED WITH caching_sha2_password AS '$A$005$"), "{create}"),
        }
        assert!(!format!("{issued:?}").contains(&pw));
    }
}

each_server! {
    /// MariaDB gives an account one default role: scopes mapping to two are
    /// refused before anything is created. MySQL sets them all as default.
    async fn scopes_of_several_server_roles(server) {
        let mut db = Db::start(server);
        let c = db.connection(&db.db.admin_dsn(), json!({}));
        let p = build(
            c,
            vec![role("both", &["o", "i"], json!({"roles": {"o": ["orders_reader"], "i": ["invoices_reader"]}}))],
        )
        .await;
        let both = p.issue(request(&lease_id(), "both", &["o", "i"], Duration::from_secs(600))).await;
        match server {
            Server::MariaDb => {
                let e = both.unwrap_err();
                assert!(
                    matches!(&e, PluginError::Permanent(m) if m.contains("MariaDB gives an account one default role") && m.contains("orders_reader, invoices_reader")),
                    "{e:?}"
                );
                assert!(db.lease_users().is_empty());
            }
            Server::Mysql8 => {
                let both = both.unwrap();
                assert_eq!(db.login(&both, "SELECT COUNT(*) FROM app.invoices").unwrap(), "0");
                assert_eq!(db.login(&both, "SELECT COUNT(*) FROM app.orders").unwrap(), "1");
                assert!(db.login(&both, "INSERT INTO app.orders VALUES (2)").unwrap_err().contains("denied"));
            }
        }
        // One scope at a time works, and grants only its role.
        let i = p.issue(request(&lease_id(), "both", &["i"], Duration::from_secs(600))).await.unwrap();
        assert_eq!(db.login(&i, "SELECT COUNT(*) FROM app.invoices").unwrap(), "0");
        assert!(db.login(&i, "SELECT COUNT(*) FROM app.orders").unwrap_err().contains("denied"));
    }
}

each_server! {
    async fn a_failing_grant_leaves_no_user(server) {
        let mut db = Db::start(server);
        let c = db.connection(&db.db.admin_dsn(), json!({}));
        let roles = vec![role(
            "broken",
            &["x"],
            json!({"roles": {"x": ["orders_reader"]}, "grants": {"x": ["GRANT SELECT ON app.orders TO {{name}}", "GRANT SELECT ON app.missing_table TO {{name}}"]}}),
        )];
        let p = build(c, roles).await;
        let e = p.issue(request(&lease_id(), "broken", &["x"], Duration::from_secs(600))).await.unwrap_err();
        assert!(
            matches!(&e, PluginError::Permanent(m) if m.contains("grant (scope `x`) statement 2 failed") && m.contains("missing_table")),
            "{e:?}"
        );
        assert!(db.lease_users().is_empty(), "{:?}", db.lease_users());
        let e = p.issue(request(&lease_id(), "nosuch", &[], Duration::from_secs(600))).await.unwrap_err();
        assert!(matches!(&e, PluginError::InvalidRequest(m) if m.contains("unknown role `nosuch`")), "{e:?}");
        let e = p.issue(request(&lease_id(), "broken", &["x"], Duration::from_secs(7200))).await.unwrap_err();
        assert!(matches!(&e, PluginError::InvalidRequest(m) if m.contains("exceeds role max 1h")), "{e:?}");
    }
}

each_server! {
    /// The account statements (CREATE USER, a GRANT per server role, SET
    /// DEFAULT ROLE) reach the server in one round trip: one command per
    /// issue on a connected pool, counted by a proxy in front of the server
    /// (three, one per statement, before they were sent together).
    async fn an_issue_sends_its_account_statements_in_one_round_trip(server) {
        let mut db = Db::start(server);
        let (proxy, p) = db.plugin_behind_a_counter().await;
        // The first issue connects the pool (its session set-up sends
        // commands of its own).
        p.issue(request(&lease_id(), "orders", &["orders.read"], Duration::from_secs(600))).await.unwrap();
        for _ in 0..3 {
            let before = proxy.commands();
            let issued = p.issue(request(&lease_id(), "orders", &["orders.read"], Duration::from_secs(600))).await.unwrap();
            assert_eq!(proxy.commands() - before, 1, "one round trip per issue");
            assert_eq!(db.login(&issued, "SELECT COUNT(*) FROM app.orders").unwrap(), "1", "granted and default");
        }
        assert_eq!(db.lease_users().len(), 4);
    }
}

each_server! {
    /// A server role the admin may not grant fails the issue naming that
    /// role (the position of the failing statement in the round trip says
    /// which), and the account made before it is dropped. On MySQL the
    /// role that fails is the second of two.
    async fn a_role_the_admin_cannot_grant_names_the_role_and_leaves_no_user(server) {
        let mut db = Db::start(server);
        let end_sessions = match server {
            Server::MariaDb => "CONNECTION ADMIN",
            Server::Mysql8 => "CONNECTION_ADMIN",
        };
        db.sql(&format!(
            "CREATE USER lessor_admin@'%' IDENTIFIED BY 'no-invoices'; \
             GRANT CREATE USER, PROCESS, {end_sessions} ON *.* TO lessor_admin@'%' WITH GRANT OPTION; \
             GRANT SELECT ON mysql.user TO lessor_admin@'%'"
        ));
        // `orders_reader` it may grant, `invoices_reader` not.
        db.db.sql_as("admin", db.db.admin_password(), "GRANT orders_reader TO lessor_admin@'%' WITH ADMIN OPTION").unwrap();
        let mapped = match server {
            Server::MariaDb => json!({"invoices.read": ["invoices_reader"]}),
            Server::Mysql8 => json!({"invoices.read": ["orders_reader", "invoices_reader"]}),
        };
        let c = db.connection(&db.db.dsn("lessor_admin", "no-invoices", ""), json!({}));
        let p = build(c, vec![role("invoices", &["invoices.read"], json!({"roles": mapped}))]).await;
        let e = p.issue(request(&lease_id(), "invoices", &["invoices.read"], Duration::from_secs(600))).await.unwrap_err();
        assert!(
            matches!(&e, PluginError::Permanent(m) if m.contains("granting role invoices_reader") && m.contains("WITH ADMIN OPTION")),
            "{e:?}"
        );
        assert_eq!(db.lease_users(), vec!["lessor_admin".to_string()], "the account made before the failing grant is dropped");
    }
}

each_server! {
    /// The PostgreSQL plugin's injection tests, for MySQL's rules, in both
    /// backslash modes: hostile claims end up as data, byte for byte.
    async fn claims_cannot_inject_sql_with_or_without_backslash_escapes(server) {
        let mut db = Db::start(server);
        db.sql("CREATE TABLE app.audit (who varchar(200), what varchar(200)); CREATE DATABASE IF NOT EXISTS scratch");
        let grants = json!({"x": [
            "INSERT INTO app.audit (who, what) VALUES ({{claim:team}}, {{claim:subject}})",
            "CREATE TABLE scratch.{{claim_ident:team}} (id int)",
            "GRANT SELECT ON scratch.{{claim_ident:team}} TO {{name}}",
        ]});
        let evil = "x'; DROP USER canary; -- \\' ` \"; # \\x27 end";
        let subject = "s'\\\"`\\";
        for (round, mode) in ["STRICT_TRANS_TABLES", "STRICT_TRANS_TABLES,NO_BACKSLASH_ESCAPES"].iter().enumerate() {
            db.sql(&format!("SET GLOBAL sql_mode = '{mode}'"));
            // A fresh plugin: its connections start in the new mode.
            let c = db.connection(&db.db.admin_dsn(), json!({}));
            let p = build(c, vec![role("r", &["x"], json!({ "grants": grants }))]).await;
            let mut req = request(&lease_id(), "r", &["x"], Duration::from_secs(600));
            let team = format!("{evil}{round}");
            req.workload.attributes.insert("team".into(), team.clone());
            req.workload.subject = subject.into();
            let issued = p.issue(req).await.unwrap();
            assert_eq!(db.sql("SELECT COUNT(*) FROM mysql.user WHERE User = 'canary'"), "1", "{mode}");
            let rows = db.sql(&format!("SELECT HEX(who), HEX(what) FROM app.audit WHERE who LIKE '%{round}'"));
            assert_eq!(rows, format!("{}\t{}", hex::encode_upper(&team), hex::encode_upper(subject)), "{mode}");
            let tables = db.sql(&format!("SELECT HEX(table_name) FROM information_schema.tables WHERE table_schema = 'scratch' AND table_name LIKE '%{round}'"));
            assert_eq!(tables, hex::encode_upper(&team), "{mode}");
            assert_eq!(db.login(&issued, &format!("SELECT COUNT(*) FROM scratch.`{}`", team.replace('`', "``"))).unwrap(), "0");
        }

        // Refused before any SQL: a missing claim, a control character.
        let c = db.connection(&db.db.admin_dsn(), json!({}));
        let p = build(c, vec![role("r", &["x"], json!({ "grants": grants }))]).await;
        let mut req = request(&lease_id(), "r", &["x"], Duration::from_secs(600));
        let e = p.issue(req.clone()).await.unwrap_err();
        assert!(matches!(&e, PluginError::InvalidRequest(m) if m.contains("no claim `team`") && m.contains("`my/r`")), "{e:?}");
        req.workload.attributes.insert("team".into(), "ci\nWITH ADMIN OPTION --".into());
        let e = p.issue(req).await.unwrap_err();
        assert!(matches!(&e, PluginError::InvalidRequest(m) if m.contains("claim `team` contains the control character U+000A")), "{e:?}");
        assert_eq!(db.lease_users().len(), 2, "the two rounds' users, nothing more");
    }
}

each_server! {
    /// lessor learns a pool's backslash mode from its first connection and
    /// does not ask again per operation. When the server's default `sql_mode`
    /// changes while the pool lives, the connections opened afterwards must
    /// still read literals the way lessor quotes them: hostile values issued
    /// through new connections land byte for byte, in both directions.
    async fn new_pooled_connections_keep_the_pools_backslash_mode_when_the_servers_default_changes(server) {
        let mut db = Db::start(server);
        db.sql("CREATE TABLE app.audit (who varchar(200), what varchar(200))");
        let grants = json!({"x": ["INSERT INTO app.audit (who, what) VALUES ({{claim:team}}, {{claim:subject}})"]});
        let modes = ["STRICT_TRANS_TABLES", "STRICT_TRANS_TABLES,NO_BACKSLASH_ESCAPES"];
        for (round, (first, then)) in [(modes[0], modes[1]), (modes[1], modes[0])].into_iter().enumerate() {
            db.sql(&format!("SET GLOBAL sql_mode = '{first}'"));
            let c = db.connection(&db.db.admin_dsn(), json!({"pool_size": 4}));
            let p = build(c, vec![role("r", &["x"], json!({ "grants": grants }))]).await;
            let issue = |p: std::sync::Arc<dyn lessor_plugin::Plugin>, tag: String| async move {
                let mut req = request(&lease_id(), "r", &["x"], Duration::from_secs(600));
                req.workload.attributes.insert("team".into(), format!("x\\'; DROP USER canary; -- \\ {tag}"));
                req.workload.subject = format!("s'\\\"`\\{tag}");
                let want = (req.workload.attributes["team"].clone(), req.workload.subject.clone());
                p.issue(req).await.unwrap();
                want
            };
            // The pool's first connection, in `first`.
            let mut wants = vec![issue(p.clone(), format!("{round}-a")).await];
            db.sql(&format!("SET GLOBAL sql_mode = '{then}'"));
            // Four at once: at least three new connections, opened in `then`.
            let mut set = tokio::task::JoinSet::new();
            for i in 0..4 {
                set.spawn(issue(p.clone(), format!("{round}-b{i}")));
            }
            while let Some(w) = set.join_next().await {
                wants.push(w.unwrap());
            }
            assert_eq!(db.sql("SELECT COUNT(*) FROM mysql.user WHERE User = 'canary'"), "1", "{first} -> {then}");
            for (team, subject) in wants {
                let tag = team.rsplit(' ').next().unwrap().to_owned();
                let row = db.sql(&format!("SELECT HEX(who), HEX(what) FROM app.audit WHERE HEX(who) LIKE '%{}'", hex::encode_upper(&tag)));
                assert_eq!(row, format!("{}\t{}", hex::encode_upper(&team), hex::encode_upper(&subject)), "{first} -> {then}, {tag}");
            }
        }
    }
}

each_server! {
    /// Under load (every pooled connection busy) a request waits for the pool:
    /// it does not open a TCP probe to the server each time, which cost both
    /// sides a handshake per request. Counted with the server's `Connections`
    /// status (every connection attempt, probes included).
    async fn a_busy_pool_does_not_probe_the_server_per_request(server) {
        let mut db = Db::start(server);
        let c = db.connection(&db.db.admin_dsn(), json!({"pool_size": 2}));
        let p = build(c, roles()).await;
        let connections = |db: &Db| db.sql("SHOW GLOBAL STATUS LIKE 'Connections'").split('\t').nth(1).unwrap().parse::<u64>().unwrap();
        // Warm: both connections open.
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..2 {
            let p = p.clone();
            set.spawn(async move { p.issue(request(&lease_id(), "orders", &["orders.read"], Duration::from_secs(600))).await });
        }
        while let Some(r) = set.join_next().await {
            r.unwrap().unwrap();
        }
        let before = connections(&db);
        for _ in 0..40 {
            let p = p.clone();
            set.spawn(async move { p.issue(request(&lease_id(), "orders", &["orders.read"], Duration::from_secs(600))).await });
        }
        while let Some(r) = set.join_next().await {
            r.unwrap().unwrap();
        }
        // The test's own `mariadb` client calls count too (one each).
        let opened = connections(&db) - before - 1;
        assert!(opened <= 2, "40 issues through a warm pool of 2 opened {opened} connections to the server");
        assert_eq!(db.lease_users().len(), 42);
    }
}

each_server! {
    async fn claims_in_comments_literals_and_executable_comments_are_refused_at_load(server) {
        let mut db = Db::start(server);
        for (statement, want) in [
            ("GRANT orders_reader TO {{name}} -- {{claim:workflow}}", "is inside a `--` or `#` comment"),
            ("GRANT orders_reader TO {{name}} # {{claim:workflow}}", "is inside a `--` or `#` comment"),
            ("GRANT orders_reader TO {{name}} /* {{claim:workflow}} */", "is inside a `/* */` comment"),
            ("INSERT INTO t VALUES ('by {{claim:workflow}}')", "is inside a string literal"),
            ("INSERT INTO t VALUES (\"by {{claim:workflow}}\")", "is inside a string literal"),
            ("GRANT SELECT ON `a{{claim:workflow}}`.* TO {{name}}", "is inside a backtick-quoted identifier"),
            ("GRANT orders_reader TO {{name}} /*! WITH ADMIN OPTION */", "executable comment"),
            ("INSERT INTO t VALUES ('a\\'b', {{claim:workflow}})", "holds a backslash"),
            ("SET SESSION sql_mode = 'NO_BACKSLASH_ESCAPES'", "changes `sql_mode`"),
            ("GRANT r TO {{user}}@{{host}}", "touches `@`"),
        ] {
            let c = db.connection(&db.db.admin_dsn(), json!({}));
            let e = try_build(c, vec![role("r", &["x"], json!({ "grants": {"x": [statement]} }))]).await.err().expect("refused");
            assert!(matches!(&e, PluginError::Misconfigured(m) if m.contains(want) && m.contains("`grants.\"x\"[0]`")), "{statement}: {e:?}");
        }
    }
}
