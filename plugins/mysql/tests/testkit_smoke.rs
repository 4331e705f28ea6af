#[test]
fn temp_mariadb_starts_answers_and_stops() {
    let mut db = lessor_mysql::testkit::TempMariadb::start().unwrap();
    assert_eq!(db.sql("SELECT 1 + 1").unwrap(), "2");
    let pw = db.admin_password().to_owned();
    assert_eq!(db.sql_as("admin", &pw, "SELECT CURRENT_USER()").unwrap(), "admin@%");
    db.stop().unwrap();
    assert!(db.sql("SELECT 1").is_err());
    db.restart().unwrap();
    assert_eq!(db.sql("SELECT COUNT(*) FROM app.orders").unwrap(), "1");
}
