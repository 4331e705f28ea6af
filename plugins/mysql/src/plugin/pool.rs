//! The admin connections of one root credential: at most `size` open, each
//! new one pinned to the pool's session ([`pin_session`]), and reused with
//! no round trip of their own. Must not import: the core (`lessor`).
//!
//! Why not sqlx's pool: it sends a `COM_PING` on every connection it takes
//! back (sqlx-core 0.8, unconditionally), one more round trip to the server
//! and a wake-up of its connection thread per operation (measured: one
//! `Com_admin_commands` per issue and per revocation; README, the MySQL
//! bench). Here a connection goes back to the pool only when the operation
//! that held it says it ended cleanly ([`Pooled::release`]); one dropped
//! without that (an error, a cancelled call) is closed, so a connection
//! left mid-statement is never handed out again. One idle for a while is
//! pinged before use (the server may have restarted or timed it out).

use std::sync::Mutex;
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::*;

/// A connection idle at least this long is pinged before it is used.
const CHECK_IDLE_AFTER: Duration = Duration::from_secs(1);

pub(super) struct ConnPool {
    inner: Arc<Inner>,
}

struct Inner {
    options: MySqlConnectOptions,
    /// What the pool's sessions talk to, pinned by the first connection.
    session: Arc<OnceLock<Session>>,
    /// One per connection in use: at most `size`.
    permits: Arc<Semaphore>,
    /// Released connections and when; the last released is used first.
    idle: Mutex<Vec<(MySqlConnection, Instant)>>,
    acquire_timeout: Duration,
    idle_timeout: Duration,
}

/// A connection taken from a [`ConnPool`]. Dereferences to the connection.
/// Dropped without [`Pooled::release`], it is closed (its socket), never
/// reused.
pub(super) struct Pooled {
    conn: Option<MySqlConnection>,
    pool: Arc<Inner>,
    _permit: OwnedSemaphorePermit,
}

impl ConnPool {
    /// A pool that connects when first used.
    pub(super) fn new(
        options: MySqlConnectOptions,
        session: Arc<OnceLock<Session>>,
        size: u32,
        acquire_timeout: Duration,
        idle_timeout: Duration,
    ) -> ConnPool {
        let size = usize::try_from(size.max(1)).unwrap_or(1);
        ConnPool {
            inner: Arc::new(Inner {
                options,
                session,
                permits: Arc::new(Semaphore::new(size)),
                idle: Mutex::new(Vec::new()),
                acquire_timeout,
                idle_timeout,
            }),
        }
    }

    /// A connection: an idle one (pinged first when idle a while), else a
    /// new one, waiting for a free slot at most the acquire timeout (then
    /// `PoolTimedOut`).
    pub(super) async fn acquire(&self) -> Result<Pooled, sqlx::Error> {
        let inner = &self.inner;
        let deadline = tokio::time::Instant::now() + inner.acquire_timeout;
        let permit = tokio::time::timeout_at(deadline, inner.permits.clone().acquire_owned())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?
            .map_err(|_| sqlx::Error::PoolClosed)?;
        while let Some((mut conn, since)) = self.take_idle() {
            if since.elapsed() < CHECK_IDLE_AFTER {
                return Ok(Pooled { conn: Some(conn), pool: inner.clone(), _permit: permit });
            }
            let pinged = tokio::time::timeout_at(deadline, conn.ping()).await;
            if let Ok(Ok(())) = pinged {
                return Ok(Pooled { conn: Some(conn), pool: inner.clone(), _permit: permit });
            }
            // Gone (a restart, the server's idle timeout): closed.
            drop(conn);
            if pinged.is_err() {
                // No answer within the acquire timeout: the next idle one
                // would get no time at all; keep it for a later call.
                return Err(sqlx::Error::PoolTimedOut);
            }
        }
        let connect = async {
            let mut conn = MySqlConnection::connect_with(&inner.options).await?;
            pin_session(&mut conn, &inner.session).await?;
            Ok::<_, sqlx::Error>(conn)
        };
        let conn = tokio::time::timeout_at(deadline, connect).await.map_err(|_| sqlx::Error::PoolTimedOut)??;
        Ok(Pooled { conn: Some(conn), pool: inner.clone(), _permit: permit })
    }

    /// The most recently released idle connection; closes those idle past
    /// the idle timeout on the way (there is no reaper task: an unused
    /// pool's connections end at its next use, or by the server's own
    /// `wait_timeout`).
    fn take_idle(&self) -> Option<(MySqlConnection, Instant)> {
        let inner = &self.inner;
        let Ok(mut idle) = inner.idle.lock() else { return None };
        let stale = idle.iter().take_while(|(_, t)| t.elapsed() >= inner.idle_timeout).count();
        idle.drain(..stale);
        idle.pop()
    }
}

impl Pooled {
    /// Returns the connection to the pool: the operation that held it ended
    /// cleanly (no statement in flight, nothing left to read).
    pub(super) fn release(mut self) {
        if let (Some(conn), Ok(mut idle)) = (self.conn.take(), self.pool.idle.lock()) {
            idle.push((conn, Instant::now()));
        }
    }
}

impl std::ops::Deref for Pooled {
    type Target = MySqlConnection;
    fn deref(&self) -> &MySqlConnection {
        // Present until `release` or drop, which take `self`.
        self.conn.as_ref().unwrap_or_else(|| unreachable!("a pooled connection is used after its release"))
    }
}

impl std::ops::DerefMut for Pooled {
    fn deref_mut(&mut self) -> &mut MySqlConnection {
        self.conn.as_mut().unwrap_or_else(|| unreachable!("a pooled connection is used after its release"))
    }
}
