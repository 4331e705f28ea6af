use lessor_mysql::testkit::{Server, TempMysql};

#[test]
fn temp_servers_start_answer_and_stop() {
    for server in Server::ALL {
        let mut db = TempMysql::start(server).unwrap();
        assert_eq!(db.server(), server);
        assert_eq!(db.sql("SELECT 1 + 1").unwrap(), "2");
        let version = db.sql("SELECT @@version").unwrap();
        assert_eq!(
            version.to_ascii_lowercase().contains("mariadb"),
            server == Server::MariaDb,
            "{version}"
        );
        if server == Server::Mysql8 {
            assert!(version.starts_with("8."), "{version}");
        }
        let pw = db.admin_password().to_owned();
        assert_eq!(
            db.sql_as("admin", &pw, "SELECT CURRENT_USER()").unwrap(),
            "admin@%"
        );
        db.stop().unwrap();
        assert!(db.sql("SELECT 1").is_err());
        db.restart().unwrap();
        assert_eq!(db.sql("SELECT COUNT(*) FROM app.orders").unwrap(), "1");
    }
}
