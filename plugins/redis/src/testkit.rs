//! Throwaway `redis-server` processes for tests: a temp dir, a free
//! loopback port, no persistence but an ACL file (`users.acl`, so `ACL SAVE`
//! is exercised; or none, [`TempRedis::start_without_acl_file`]), an admin
//! user `default` with a random password; killed on drop.
//!
//! Uses `$LESSOR_REDIS_SERVER`, else `redis-server` on the `PATH` or in
//! `/usr/bin` (Valkey's `valkey-server` works too). A missing binary is an
//! error that says what to install; tests never skip silently.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running throwaway server.
pub struct TempRedis {
    exe: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    password: String,
    /// Serves TLS only (`rediss://`), with `tls.crt` / `tls.key` in `dir`.
    tls: bool,
    /// Keeps its users in `users.acl` (`--aclfile`); else the admin
    /// password is `--requirepass` and `ACL SAVE` fails.
    acl_file: bool,
    child: Option<Child>,
}

fn find_server() -> Result<PathBuf, String> {
    if let Ok(p) = std::env::var("LESSOR_REDIS_SERVER") {
        let p = PathBuf::from(p);
        return if p.exists() { Ok(p) } else { Err(format!("LESSOR_REDIS_SERVER={} does not exist", p.display())) };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
        .map(|d| d.join("redis-server"))
        .find(|p| p.exists())
        .ok_or_else(|| {
            "redis-server not found (looked in $LESSOR_REDIS_SERVER, the PATH and /usr/bin): install it with \
             `apt-get install redis-server` (Debian/Ubuntu)"
                .to_string()
        })
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

impl TempRedis {
    /// Starts a server with a random admin password. Blocking; takes a few
    /// milliseconds.
    pub fn start() -> Result<TempRedis, String> {
        TempRedis::start_with_password(&format!("adm{}", hex::encode(rand::random::<[u8; 12]>())))
    }

    /// Starts a server whose admin user `default` has `password` (another
    /// node of the same deployment).
    pub fn start_with_password(password: &str) -> Result<TempRedis, String> {
        TempRedis::launch(password, None)
    }

    /// Starts a server with no ACL file (its users live in memory only, as
    /// on a node configured without `aclfile`), admin password `password`.
    pub fn start_without_acl_file(password: &str) -> Result<TempRedis, String> {
        let mut r = TempRedis::prepare(password, None)?;
        r.acl_file = false;
        r.restart()?;
        Ok(r)
    }

    /// Starts a server that speaks TLS only, with this server certificate
    /// and key (PEM), a random admin password and no client certificates.
    pub fn start_tls(cert_pem: &str, key_pem: &str) -> Result<TempRedis, String> {
        let password = format!("adm{}", hex::encode(rand::random::<[u8; 12]>()));
        TempRedis::launch(&password, Some((cert_pem, key_pem)))
    }

    fn launch(password: &str, tls: Option<(&str, &str)>) -> Result<TempRedis, String> {
        let mut r = TempRedis::prepare(password, tls)?;
        r.restart()?;
        Ok(r)
    }

    /// The directory, its files and a port; not started.
    fn prepare(password: &str, tls: Option<(&str, &str)>) -> Result<TempRedis, String> {
        if password.is_empty() || !password.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err("the test admin password must be letters and digits".into());
        }
        let exe = find_server()?;
        let dir = tempfile::Builder::new().prefix("lessor-redis-").tempdir().map_err(|e| e.to_string())?;
        let password = password.to_owned();
        std::fs::write(dir.path().join("users.acl"), format!("user default on >{password} ~* &* +@all\n"))
            .map_err(|e| e.to_string())?;
        if let Some((cert, key)) = tls {
            std::fs::write(dir.path().join("tls.crt"), cert).map_err(|e| e.to_string())?;
            std::fs::write(dir.path().join("tls.key"), key).map_err(|e| e.to_string())?;
        }
        Ok(TempRedis { exe, dir, port: free_port()?, password, tls: tls.is_some(), acl_file: true, child: None })
    }

    /// Starts it (again) on the same port, dir and ACL file.
    pub fn restart(&mut self) -> Result<(), String> {
        if self.child.is_some() {
            return Ok(());
        }
        let log = std::fs::File::create(self.dir.path().join("server.log")).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&self.exe);
        cmd.args(["--bind", "127.0.0.1"]);
        if self.tls {
            cmd.args(["--port", "0", "--tls-auth-clients", "no", "--tls-port"])
                .arg(self.port.to_string())
                .arg("--tls-cert-file")
                .arg(self.dir.path().join("tls.crt"))
                .arg("--tls-key-file")
                .arg(self.dir.path().join("tls.key"));
        } else {
            cmd.arg("--port").arg(self.port.to_string());
        }
        if self.acl_file {
            cmd.arg("--aclfile").arg(self.dir.path().join("users.acl"));
        } else {
            cmd.arg("--requirepass").arg(&self.password);
        }
        let child = cmd
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("running {}: {e}", self.exe.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.ping() {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    self.child = None;
                    let log = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
                    return Err(format!("redis-server exited ({status}): {log}"));
                }
            }
            if Instant::now() > deadline {
                return Err(format!("redis-server did not answer on 127.0.0.1:{}", self.port));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        if self.tls {
            // Listening is enough: the server accepts only once it is ready.
            return true;
        }
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut buf = [0u8; 64];
        matches!(s.read(&mut buf), Ok(n) if n > 0)
    }

    /// Kills the server at once (its ACL file stays): "the node is down".
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>` (`rediss://` with TLS: the certificate
    /// must name IP 127.0.0.1).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The password of the admin user `default`.
    pub fn admin_password(&self) -> &str {
        &self.password
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The ACL file as the server last saved it.
    pub fn acl_file(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("users.acl")).unwrap_or_default()
    }
}

impl Drop for TempRedis {
    fn drop(&mut self) {
        self.stop();
    }
}
