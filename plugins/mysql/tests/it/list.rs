//! Listing what lessor made (`Plugin::list_objects`, for the core's
//! reconciler): only users in lessor's shape (MariaDB's and MySQL's), each
//! mapped back to its lease id, in pages in name order; never the admin's
//! own user, a MariaDB server role or a user that only shares the prefix.

use std::time::Duration;

use lessor_plugin::{LeaseRef, VendorObject};
use time::OffsetDateTime;

use lessor_mysql::testkit::Server;

use crate::support::*;

each_server! {
    async fn issued_users_are_listed_by_lease_id_in_pages_and_nothing_else_is(server) {
        let mut db = Db::start(server);
        let hex = "0123456789abcdef0123456789abcdef";
        // The admin itself has lessor's shape: it must never be listed.
        let shaped = |prefix: &str| match server {
            Server::MariaDb => format!("{prefix}_x_{hex}"),
            Server::Mysql8 => lessor_mysql::mysql_user(prefix, hex),
        };
        let admin = shaped("lessor");
        db.sql(&format!(
            "CREATE USER {admin}@'%' IDENTIFIED BY 'adminpw'; GRANT ALL ON *.* TO {admin}@'%' WITH GRANT OPTION"
        ));
        db.db
            .sql_as("admin", db.db.admin_password(), &format!("GRANT orders_reader TO {admin}@'%' WITH ADMIN OPTION"))
            .unwrap();
        let dsn = db.db.dsn(&admin, "adminpw", "");
        let c = db.connection(&dsn, serde_json::json!({}));
        let p = build(c, roles()).await;
        assert!(p.list_objects(None, 100).await.unwrap().is_empty(), "a fresh server holds nothing of lessor's");

        let mut ids = Vec::new();
        for i in 0..5 {
            let id = lease_id();
            let (role, scopes): (&str, &[&str]) = if i % 2 == 0 { ("orders", &["orders.read"]) } else { ("plain", &[]) };
            p.issue(request(&id, role, scopes, Duration::from_secs(600))).await.unwrap();
            ids.push(id);
        }
        // Not lessor's: the prefix alone, a lease-shaped name under another
        // prefix, and per server: MariaDB a server role in lessor's shape, a
        // short suffix, upper case; MySQL a digit short, one too many, a value
        // over 128 bits.
        db.sql(&format!("CREATE USER lessor_admin@'%'; CREATE USER {}@'%'", shaped("other")));
        match server {
            Server::MariaDb => db.sql(&format!(
                "CREATE ROLE lessor_r_{hex}; CREATE USER lessor_app_tooshort_0123abcd@'%'; \
                 CREATE USER lessor_app_0123456789ABCDEF0123456789abcdef@'%'"
            )),
            Server::Mysql8 => db.sql(&format!(
                "CREATE USER {short}@'%'; CREATE USER {admin}0@'%'; CREATE USER lessor_{over}@'%'",
                short = &admin[..admin.len() - 1],
                over = "z".repeat(22),
            )),
        };
        // A second host of an issued user is still one object.
        let first_user = {
            let mut users = db.lease_users();
            users.retain(|u| u.ends_with(&ids[0].as_str()[4..]) || *u == lessor_mysql::mysql_user("lessor", &ids[0].as_str()[4..]));
            users.pop().unwrap()
        };
        db.sql(&format!("CREATE USER {first_user}@'localhost'"));

        let all = p.list_objects(None, 100).await.unwrap();
        // In lessor's shape but no lease id (reported, never revoked): on
        // MySQL the name whose digits exceed 128 bits.
        let unmapped: Vec<&str> = all.iter().filter(|o| o.lease_id.is_none()).map(|o| o.name.as_str()).collect();
        let over = format!("lessor_{}", "z".repeat(22));
        assert_eq!(unmapped, if server == Server::Mysql8 { vec![over.as_str()] } else { vec![] }, "{all:?}");
        let all: Vec<VendorObject> = all.into_iter().filter(|o| o.lease_id.is_some()).collect();
        let mut listed: Vec<String> = all.iter().map(|o| o.lease_id.as_ref().unwrap().to_string()).collect();
        listed.sort();
        let mut want: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
        want.sort();
        assert_eq!(listed, want, "{all:?}");
        let users = db.lease_users();
        for o in &all {
            let id = o.lease_id.as_ref().unwrap();
            let named = match server {
                Server::MariaDb => o.name.ends_with(&id.as_str()[4..]),
                Server::Mysql8 => o.name == lessor_mysql::mysql_user("lessor", &id.as_str()[4..]),
            };
            assert!(users.contains(&o.name) && named, "{o:?} among {users:?}");
        }
        let names: Vec<&str> = all.iter().map(|o| o.name.as_str()).collect();
        assert!(names.windows(2).all(|w| w[0] < w[1]), "in name order: {names:?}");

        // Pages of two, each after the last name of the one before.
        let mut paged: Vec<VendorObject> = Vec::new();
        loop {
            let page = p.list_objects(paged.last().map(|o| o.name.as_str()), 2).await.unwrap();
            assert!(page.len() <= 2);
            let done = page.len() < 2;
            paged.extend(page);
            if done {
                break;
            }
        }
        paged.retain(|o| o.lease_id.is_some());
        assert_eq!(paged, all);

        // What the reconciler does with a stray: revoke by the listed lease id
        // alone (no handle, no role) drops every account of it.
        let stray = all.iter().find(|o| o.name == first_user).unwrap();
        let lease = LeaseRef {
            lease_id: stray.lease_id.clone().unwrap(),
            role: String::new(),
            handle: None,
            expires_at: OffsetDateTime::now_utc(),
            root_version: None,
        };
        p.revoke(&lease).await.unwrap();
        assert!(!db.lease_users().contains(&stray.name));
        let left = p.list_objects(None, 100).await.unwrap();
        assert_eq!(left.iter().filter(|o| o.lease_id.is_some()).count(), 4, "{left:?}");
    }
}
