#[test]
fn temp_redis_starts_answers_and_stops() {
    let mut r = lessor_redis::testkit::TempRedis::start().unwrap();
    let up = |port: u16| std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
    assert!(up(r.port()));
    r.stop();
    assert!(!up(r.port()));
    r.restart().unwrap();
    assert!(up(r.port()));
    assert!(r.acl_file().contains("user default on"));
}
