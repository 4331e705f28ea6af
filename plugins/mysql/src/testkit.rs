//! Throwaway MariaDB and MySQL 8 servers for tests: a data directory made
//! in a temp dir, the server on 127.0.0.1 on a free port, an `admin`
//! account with every privilege, torn down on drop.
//!
//! - MariaDB: the system's binaries (Debian's `mariadb-server` package):
//!   `$LESSOR_MARIADB_BINDIR` if set, else `mariadbd` from `/usr/sbin` or
//!   `/usr/bin`, and `mariadb-install-db` / `mariadb` from the `PATH`. As
//!   root (CI) the server runs as the `mysql` user.
//! - MySQL 8: an unpacked MySQL 8 (`usr/sbin/mysqld`, `usr/bin/mysql`, and
//!   any libraries in `usr/lib/x86_64-linux-gnu`) at `$LESSOR_MYSQL8_DIR`,
//!   else `~/.cache/lessor-tests/mysql-8.0`, where `./test.sh` puts it
//!   (`tests/fetch-mysql8.sh`: Ubuntu 22.04's packages). As root it runs as
//!   root (`--user=root`).
//!
//! A missing installation is an error that says what to install; tests
//! never skip.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Which server a [`TempMysql`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    MariaDb,
    Mysql8,
}

impl Server {
    /// Both, for tests that must pass on each.
    pub const ALL: [Server; 2] = [Server::MariaDb, Server::Mysql8];

    pub fn label(self) -> &'static str {
        match self {
            Server::MariaDb => "MariaDB",
            Server::Mysql8 => "MySQL 8",
        }
    }
}

/// The programs of one installation.
struct Install {
    server: Server,
    daemon: PathBuf,
    client: PathBuf,
    /// MySQL 8's unpacked root (basedir, messages, libraries).
    root: Option<PathBuf>,
}

impl Install {
    fn find(server: Server) -> Result<Install, String> {
        match server {
            Server::MariaDb => {
                let daemon = find(&["mariadbd", "mysqld"]).ok_or(MISSING)?;
                let client = find(&["mariadb"])
                    .ok_or("the `mariadb` client is missing: install `mariadb-client` (comes with mariadb-server)")?;
                Ok(Install {
                    server,
                    daemon,
                    client,
                    root: None,
                })
            }
            Server::Mysql8 => {
                let root = mysql8_dir();
                let daemon = root.join("usr/sbin/mysqld");
                let client = root.join("usr/bin/mysql");
                if !daemon.exists() || !client.exists() {
                    return Err(format!(
                        "MySQL 8 not found at {}: run `./test.sh` once (it fetches it with tests/fetch-mysql8.sh), \
                         or `tests/fetch-mysql8.sh {}`, or set LESSOR_MYSQL8_DIR to a directory holding \
                         usr/sbin/mysqld and usr/bin/mysql",
                        root.display(),
                        root.display()
                    ));
                }
                Ok(Install {
                    server,
                    daemon,
                    client,
                    root: Some(root),
                })
            }
        }
    }

    /// A command for one of its programs, with its libraries.
    fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        if let Some(root) = &self.root {
            cmd.env("LD_LIBRARY_PATH", root.join("usr/lib/x86_64-linux-gnu"));
        }
        cmd
    }
}

impl Install {
    /// MySQL 8's base directory and messages (an unpacked, not installed,
    /// server finds neither by itself).
    fn base_args(&self) -> Vec<String> {
        match &self.root {
            Some(root) => vec![
                format!("--basedir={}", root.join("usr").display()),
                format!(
                    "--lc-messages-dir={}",
                    root.join("usr/share/mysql").display()
                ),
            ],
            None => Vec::new(),
        }
    }
}

/// Where `./test.sh` unpacks MySQL 8 unless `LESSOR_MYSQL8_DIR` says.
fn mysql8_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("LESSOR_MYSQL8_DIR") {
        return PathBuf::from(d);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    cache.join("lessor-tests/mysql-8.0")
}

/// A running throwaway server.
pub struct TempMysql {
    install: Install,
    dir: tempfile::TempDir,
    port: u16,
    password: String,
    as_mysql: bool,
    child: Option<Child>,
}

const MISSING: &str =
    "MariaDB server binaries not found: install them with `apt-get install mariadb-server` \
     (Debian/Ubuntu; the tests start their own servers, the system service may stay stopped), \
     or set LESSOR_MARIADB_BINDIR to the directory holding mariadbd";

fn find(names: &[&str]) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Ok(d) = std::env::var("LESSOR_MARIADB_BINDIR") {
        dirs.push(PathBuf::from(d));
    }
    dirs.extend(["/usr/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/sbin"].map(PathBuf::from));
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs.iter()
        .flat_map(|d| names.iter().map(move |n| d.join(n)))
        .find(|p| p.exists())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

fn output(cmd: &mut Command, what: &str) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running {what}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
}

impl TempMysql {
    /// Makes the data directory and starts the server. Blocking; takes a
    /// few seconds.
    pub fn start(server: Server) -> Result<TempMysql, String> {
        let install = Install::find(server)?;
        let as_root = is_root();
        let dir = tempfile::Builder::new()
            .prefix("lessor-my-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let password = format!("pw{}", hex::encode(rand::random::<[u8; 12]>()));
        // Its own tmpdir: concurrent servers' temporary tables in a shared
        // /tmp collide during bootstrap.
        std::fs::create_dir(dir.path().join("tmp")).map_err(|e| e.to_string())?;
        let data = format!("--datadir={}", dir.path().join("data").display());
        let tmp = format!("--tmpdir={}", dir.path().join("tmp").display());
        // MariaDB runs as `mysql` when we are root; MySQL 8 as root itself.
        let as_mysql = as_root && server == Server::MariaDb;
        match server {
            Server::MariaDb => {
                let installer = find(&["mariadb-install-db", "mysql_install_db"]).ok_or(MISSING)?;
                if as_mysql {
                    output(
                        Command::new("chown")
                            .args(["-R", "mysql:mysql"])
                            .arg(dir.path()),
                        "chown (does the `mysql` user exist?)",
                    )?;
                }
                let mut cmd = Command::new(&installer);
                cmd.arg("--no-defaults").arg(&data).arg(&tmp).args([
                    "--auth-root-authentication-method=normal",
                    "--skip-test-db",
                    "--skip-name-resolve",
                ]);
                if as_mysql {
                    cmd.arg("--user=mysql");
                }
                output(&mut cmd, &installer.display().to_string())?;
            }
            Server::Mysql8 => {
                let mut cmd = install.command(&install.daemon);
                cmd.arg("--no-defaults")
                    .arg("--initialize-insecure")
                    .arg(&data)
                    .arg(&tmp)
                    .args(install.base_args());
                if as_root {
                    cmd.arg("--user=root");
                }
                output(&mut cmd, "mysqld --initialize-insecure")?;
            }
        }
        let mut db = TempMysql {
            install,
            dir,
            port: free_port()?,
            password,
            as_mysql,
            child: None,
        };
        db.start_server()?;
        // root@localhost has no password and only the socket; the tests'
        // admin logs in over TCP with a password.
        db.sql_socket(&format!(
            "CREATE USER 'admin'@'%' IDENTIFIED BY '{pw}'; GRANT ALL ON *.* TO 'admin'@'%' WITH GRANT OPTION; \
             CREATE DATABASE app; CREATE TABLE app.orders (id int); INSERT INTO app.orders VALUES (1); \
             CREATE TABLE app.invoices (id int); CREATE USER canary@'%'",
            pw = db.password
        ))?;
        Ok(db)
    }

    /// Which server this is.
    pub fn server(&self) -> Server {
        self.install.server
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    fn start_server(&mut self) -> Result<(), String> {
        let mut cmd = self.install.command(&self.install.daemon);
        cmd.arg("--no-defaults")
            .arg(format!(
                "--datadir={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("--socket={}", self.socket().display()))
            .arg(format!(
                "--pid-file={}",
                self.dir.path().join("pid").display()
            ))
            .arg(format!(
                "--log-error={}",
                self.dir.path().join("error.log").display()
            ))
            .arg(format!(
                "--tmpdir={}",
                self.dir.path().join("tmp").display()
            ))
            .arg(format!("--port={}", self.port))
            .args([
                "--bind-address=127.0.0.1",
                "--skip-name-resolve",
                "--skip-log-bin",
                "--max-connections=400",
                "--innodb-buffer-pool-size=32M",
                "--innodb-log-file-size=16M",
                "--innodb-flush-log-at-trx-commit=0",
                "--performance-schema=OFF",
            ])
            .args(self.install.base_args());
        if self.install.server == Server::Mysql8 {
            // No X Protocol listener (a fixed port shared by every server);
            // no file import or export (its default directory is a
            // system path).
            cmd.args(["--mysqlx=OFF", "--secure-file-priv=NULL"]);
        }
        if self.as_mysql {
            cmd.arg("--user=mysql");
        } else if self.install.server == Server::Mysql8 && is_root() {
            cmd.arg("--user=root");
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.install.daemon.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && self.sql_socket("SELECT 1").is_ok()
            {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                let log =
                    std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default();
                return Err(format!(
                    "{} exited with {status}: {log}",
                    self.install.daemon.display()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{} did not listen on 127.0.0.1:{} within 60s",
                    self.install.server.label(),
                    self.port
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server (a clean shutdown), keeping its data: "the server
    /// is down".
    pub fn stop(&mut self) -> Result<(), String> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let _ = self.sql_socket("SHUTDOWN");
        let deadline = Instant::now() + Duration::from_secs(60);
        while child.try_wait().map_err(|e| e.to_string())?.is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{} did not stop within 60s; killed",
                    self.install.server.label()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Starts it again on the same port and data.
    pub fn restart(&mut self) -> Result<(), String> {
        self.start_server()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The `admin` account's password (every privilege, any host).
    pub fn admin_password(&self) -> &str {
        &self.password
    }

    /// The admin DSN (TCP, password).
    pub fn admin_dsn(&self) -> String {
        self.dsn("admin", &self.password, "")
    }

    pub fn dsn(&self, user: &str, password: &str, db: &str) -> String {
        format!("mysql://{user}:{password}@127.0.0.1:{}/{db}", self.port)
    }

    /// Runs SQL as root over the socket (setup and inspection); tab-separated
    /// rows without headers.
    pub fn sql(&self, sql: &str) -> Result<String, String> {
        self.sql_socket(sql)
    }

    fn sql_socket(&self, sql: &str) -> Result<String, String> {
        output(
            self.install
                .command(&self.install.client)
                .args(["--no-defaults", "-N", "-B", "-u", "root"])
                .arg(format!("--socket={}", self.socket().display()))
                .arg("-e")
                .arg(sql),
            "the client (as root)",
        )
    }

    /// Runs SQL over TCP as `user` (what a workload does with the login
    /// lessor issued it).
    pub fn sql_as(&self, user: &str, password: &str, sql: &str) -> Result<String, String> {
        output(
            self.install
                .command(&self.install.client)
                .args([
                    "--no-defaults",
                    "-N",
                    "-B",
                    "--protocol=TCP",
                    "-h",
                    "127.0.0.1",
                ])
                .arg(format!("--port={}", self.port))
                .arg(format!("--user={user}"))
                .arg("-e")
                .arg(sql)
                .env("MYSQL_PWD", password),
            "the client",
        )
    }

    /// Users whose name starts with `prefix` (in `mysql.user`), sorted.
    pub fn users_with_prefix(&self, prefix: &str) -> Result<Vec<String>, String> {
        // `!` escapes: a backslash is no escape on MySQL under the
        // `NO_BACKSLASH_ESCAPES` mode some tests set globally.
        let like = prefix.replace('!', "!!").replace('_', "!_").replace('%', "!%");
        let out = self.sql(&format!(
            "SELECT User FROM mysql.user WHERE User LIKE '{like}%' ESCAPE '!' ORDER BY User"
        ))?;
        Ok(out
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect())
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TempMysql {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
