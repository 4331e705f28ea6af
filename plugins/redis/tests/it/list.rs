//! Listing what lessor made (`Plugin::list_objects`, for the core's
//! reconciler): users in lessor's shape on any node, each mapped back to its
//! lease id, in pages; never the admin or a user that only shares the
//! prefix.

use lessor_plugin::{Plugin, VendorObject};

use crate::support::*;

#[tokio::test]
async fn issued_users_are_listed_by_lease_id_in_pages_and_nothing_else_is() {
    let pair = Pair::start();
    let p = pair.plugin();
    assert!(p.list_objects(None, 100).await.unwrap().is_empty(), "fresh servers hold nothing of lessor's");
    let mut ids = Vec::new();
    for _ in 0..5 {
        let id = lease_id();
        issue(&p, &id, &["cache.read"]).await.unwrap();
        ids.push(id);
    }
    // Not lessor's: the prefix alone, a lease-shaped name under another
    // prefix, a too-short or upper-case suffix. And one lease-shaped user on
    // node b only (made behind lessor's back): it counts.
    let hex = "0123456789abcdef0123456789abcdef";
    let only_b = format!("lessor_x_{hex}");
    for (r, extra) in [(&pair.a, None), (&pair.b, Some(only_b.as_str()))] {
        let mut c = connect(r, "default", &pair.password).await.unwrap();
        let mut names = vec![
            "lessor_admin".to_owned(),
            format!("other_x_{hex}"),
            "lessor_app_tooshort_0123abcd".to_owned(),
            "lessor_app_0123456789ABCDEF0123456789ABCDEF".to_owned(),
        ];
        names.extend(extra.map(str::to_owned));
        for n in names {
            let _: () = redis::cmd("ACL").arg("SETUSER").arg(&n).arg("on").arg(">pw").query_async(&mut c).await.unwrap();
        }
    }
    let all = p.list_objects(None, 100).await.unwrap();
    let mut listed: Vec<String> = all.iter().map(|o| o.lease_id.as_ref().unwrap().to_string()).collect();
    listed.sort();
    let mut want: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    want.push(format!("lse_{hex}"));
    want.sort();
    assert_eq!(listed, want, "{all:?}");
    let names: Vec<&str> = all.iter().map(|o| o.name.as_str()).collect();
    assert!(names.windows(2).all(|w| w[0] < w[1]), "in name order, once each: {names:?}");
    assert!(names.contains(&only_b.as_str()));
    for o in &all {
        assert!(o.name.ends_with(&o.lease_id.as_ref().unwrap().as_str()["lse_".len()..]), "{o:?}");
    }

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
    assert_eq!(paged, all);

    // What the reconciler does with a stray: revoke by the listed lease id
    // alone (no handle) deletes it on every node.
    let stray = all.iter().find(|o| o.name == only_b).unwrap();
    p.revoke(&lease(stray.lease_id.as_ref().unwrap(), None)).await.unwrap();
    for r in pair.nodes() {
        assert!(!pair.users(r).await.contains(&only_b));
    }
    assert_eq!(p.list_objects(None, 100).await.unwrap().len(), 5);
}

#[tokio::test]
async fn the_admin_is_never_listed_even_in_lessors_shape() {
    let pair = Pair::start();
    let hex = "00000000000000000000000000000001";
    let admin = format!("lessor_admin_{hex}");
    for r in pair.nodes() {
        let mut c = connect(r, "default", &pair.password).await.unwrap();
        let _: () = redis::cmd("ACL")
            .arg(&["SETUSER", admin.as_str(), "on", &format!(">{}", pair.password), "allcommands", "allkeys"][..])
            .query_async(&mut c)
            .await
            .unwrap();
    }
    let mut conn = pair.connection();
    conn["username"] = serde_json::json!(admin);
    let p = pair.plugin_with(conn, roles()).unwrap();
    let id = lease_id();
    issue(&p, &id, &["cache.read"]).await.unwrap();
    let all = p.list_objects(None, 100).await.unwrap();
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0].lease_id.as_ref(), Some(&id));
}
