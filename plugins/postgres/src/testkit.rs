//! Throwaway PostgreSQL servers for tests: `initdb` into a temp dir, a free
//! loopback port, password (SCRAM) auth over TCP, torn down on drop.
//!
//! Uses the system's server binaries: `$LESSOR_PG_BINDIR`, else the newest
//! `/usr/lib/postgresql/*/bin`. As root (CI), the server runs as the
//! `postgres` user through `runuser`, since PostgreSQL refuses to run as root.
//! A missing installation is an error that says what to install; tests never
//! skip silently.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A running throwaway server.
pub struct TempPostgres {
    bindir: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    password: String,
    as_postgres: bool,
    running: bool,
}

fn find_bindir() -> Result<PathBuf, String> {
    if let Ok(d) = std::env::var("LESSOR_PG_BINDIR") {
        let p = PathBuf::from(d);
        if p.join("initdb").exists() {
            return Ok(p);
        }
        return Err(format!("LESSOR_PG_BINDIR={} has no initdb", p.display()));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let v = e.file_name().to_str()?.parse::<u32>().ok()?;
                    let bin = e.path().join("bin");
                    bin.join("initdb").exists().then_some((v, bin))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found.pop().map(|(_, p)| p).ok_or_else(|| {
        "PostgreSQL server binaries not found (looked in $LESSOR_PG_BINDIR and /usr/lib/postgresql/*/bin): \
         install them with `apt-get install postgresql` (Debian/Ubuntu)"
            .to_string()
    })
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

impl TempPostgres {
    /// initdb + start. Blocking; takes a second or two.
    pub fn start() -> Result<TempPostgres, String> {
        let bindir = find_bindir()?;
        let as_postgres = is_root();
        let dir = tempfile::Builder::new().prefix("lessor-pg-").tempdir().map_err(|e| e.to_string())?;
        let password = format!("pw{}", hex::encode(rand::random::<[u8; 12]>()));
        std::fs::write(dir.path().join("pwfile"), &password).map_err(|e| e.to_string())?;
        std::fs::create_dir(dir.path().join("sock")).map_err(|e| e.to_string())?;
        let mut pg = TempPostgres { bindir, dir, port: free_port()?, password, as_postgres, running: false };
        if as_postgres {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(pg.dir.path())
                .status()
                .map_err(|e| format!("chown: {e}"))?
                .success();
            if !ok {
                return Err("cannot chown the temp dir to the `postgres` user (does it exist?)".into());
            }
        }
        let data = pg.data();
        let pwfile = pg.dir.path().join("pwfile");
        pg.run(
            "initdb",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "--auth-local=trust".as_ref(),
                "--auth-host=scram-sha-256".as_ref(),
                format!("--pwfile={}", pwfile.display()).as_ref(),
                "-E".as_ref(),
                "UTF8".as_ref(),
                "--no-sync".as_ref(),
                "--no-instructions".as_ref(),
            ],
        )?;
        pg.start_server()?;
        Ok(pg)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn run(&self, tool: &str, args: &[&std::ffi::OsStr]) -> Result<(), String> {
        let exe = self.bindir.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let out = cmd
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running {}: {e}", exe.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} failed: {}{}",
                exe.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    }

    fn start_server(&mut self) -> Result<(), String> {
        let data = self.data();
        let log = self.dir.path().join("server.log");
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off",
            self.port,
            self.dir.path().join("sock").display()
        );
        self.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-l".as_ref(),
                log.as_os_str(),
                "-o".as_ref(),
                opts.as_ref(),
                "-w".as_ref(),
                "-t".as_ref(),
                "60".as_ref(),
                "start".as_ref(),
            ],
        )?;
        self.running = true;
        // pg_ctl -w waits for readiness; make sure TCP answers too.
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() > deadline {
                return Err(format!("PostgreSQL did not listen on 127.0.0.1:{}", self.port));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Stops the server (fast shutdown), keeping its data: "PostgreSQL is down".
    pub fn stop(&mut self) -> Result<(), String> {
        if !self.running {
            return Ok(());
        }
        let data = self.data();
        self.run("pg_ctl", &["-D".as_ref(), data.as_os_str(), "-m".as_ref(), "fast".as_ref(), "-w".as_ref(), "stop".as_ref()])?;
        self.running = false;
        Ok(())
    }

    /// Starts it again on the same port and data.
    pub fn restart(&mut self) -> Result<(), String> {
        self.start_server()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The superuser's DSN (password auth over TCP).
    pub fn admin_dsn(&self) -> String {
        self.dsn("postgres", &self.password, "postgres")
    }

    pub fn superuser_password(&self) -> &str {
        &self.password
    }

    pub fn dsn(&self, user: &str, password: &str, db: &str) -> String {
        format!("postgres://{user}:{password}@127.0.0.1:{}/{db}?sslmode=disable", self.port)
    }

    /// Runs SQL as the superuser through psql (setup for tests).
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, String> {
        self.psql_as("postgres", &self.password, db, sql)
    }

    /// Runs SQL through psql, logged in as `user` with `password` (what a
    /// workload does with the login lessor issued it).
    pub fn psql_as(&self, user: &str, password: &str, db: &str, sql: &str) -> Result<String, String> {
        let psql = self.bindir.join("psql");
        let out = Command::new(&psql)
            .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", user, "-d", db])
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-c")
            .arg(sql)
            .env("PGPASSWORD", password)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running {}: {e}", psql.display()))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        if self.running {
            let data = self.data();
            let _ = self.run(
                "pg_ctl",
                &["-D".as_ref(), data.as_os_str(), "-m".as_ref(), "immediate".as_ref(), "-w".as_ref(), "stop".as_ref()],
            );
        }
    }
}
