#[test]
fn temp_postgres_starts_answers_and_stops() {
    let mut pg = lessor_postgres::testkit::TempPostgres::start().unwrap();
    assert_eq!(pg.psql("postgres", "SELECT 1 + 1").unwrap(), "2");
    pg.stop().unwrap();
    assert!(pg.psql("postgres", "SELECT 1").is_err());
    pg.restart().unwrap();
    assert_eq!(pg.psql("postgres", "SELECT current_user").unwrap(), "postgres");
}
