//! Listing what lessor made (`Plugin::list_objects`, for the core's
//! reconciler): only names in lessor's shape, each mapped back to its lease
//! id, in pages; never the admin, a superuser or a role that only shares the
//! prefix.

use lessor_plugin::VendorObject;
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn issued_roles_are_listed_by_lease_id_in_pages_and_nothing_else_is() {
    let mut pg = Pg::start();
    let p = pg.plugin(json!({})).await;
    assert!(p.list_objects(None, 100).await.unwrap().is_empty(), "a fresh server holds nothing of lessor's");
    let mut ids = Vec::new();
    for _ in 0..5 {
        let id = lease_id();
        issue(p.as_ref(), &id, "orders", &["orders.read"]).await;
        ids.push(id);
    }
    // Not lessor's: the prefix alone, a superuser in lessor's shape, and a
    // lease-shaped name under another prefix.
    let hex = "0123456789abcdef0123456789abcdef";
    pg.psql(&format!(
        "CREATE ROLE lessor_admin LOGIN; CREATE ROLE lessor_x_{hex} SUPERUSER; CREATE ROLE other_x_{hex}; \
         CREATE ROLE lessor_app_tooshort_0123abcd"
    ));

    let all = p.list_objects(None, 100).await.unwrap();
    let mut listed: Vec<String> = all.iter().map(|o| o.lease_id.as_ref().unwrap().to_string()).collect();
    listed.sort();
    let mut want: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    want.sort();
    assert_eq!(listed, want, "{all:?}");
    for o in &all {
        assert!(pg.role_exists(&o.name) && o.name.ends_with(&hex_of(o.lease_id.as_ref().unwrap())), "{o:?}");
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
    assert_eq!(paged, all);

    // What the reconciler does with a stray: revoke by the listed lease id
    // alone (no handle, no role) drops it.
    let stray = &all[0];
    p.revoke(&lease(stray.lease_id.as_ref().unwrap(), "", None)).await.unwrap();
    assert!(!pg.role_exists(&stray.name));
    assert_eq!(p.list_objects(None, 100).await.unwrap().len(), 4);
}
