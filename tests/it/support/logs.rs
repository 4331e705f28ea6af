//! Captures the debug logs of one test: one process-wide subscriber, set
//! once, that writes an event into the buffer of the test whose thread
//! emitted it (a current-thread tokio test runs all its tasks on its own
//! thread), and drops it otherwise.
//!
//! Why not `tracing::subscriber::set_default` per test: tracing caches each
//! callsite's `Interest` when the callsite is first hit. While exactly one
//! dispatcher is registered, tracing-core computes that first interest from
//! the *current thread's* default only, so a callsite first hit on another
//! test's thread (no scoped subscriber there) is cached as `never` for the
//! whole process, and the capturing test never sees that event again. That
//! made `connections::production_needs_...` miss "root credential installed
//! as active" when another connections test installed a root first.
//! Here the one dispatcher is global and its filter is decided per event
//! (`Interest::sometimes`), so no callsite is ever cached as off.

use std::cell::RefCell;
use std::sync::{Arc, Mutex, Once};

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::Layer;

thread_local! {
    static CAPTURE: RefCell<Option<Arc<Mutex<Vec<u8>>>>> = const { RefCell::new(None) };
}

/// This thread's logs from [`capture`] until the guard drops.
pub struct Captured {
    buf: Arc<Mutex<Vec<u8>>>,
}

impl Captured {
    /// Everything captured so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf.lock().unwrap()).into_owned()
    }
}

impl Drop for Captured {
    fn drop(&mut self) {
        CAPTURE.with(|c| c.borrow_mut().take());
    }
}

struct ThreadWriter;

impl std::io::Write for ThreadWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        CAPTURE.with(|c| {
            if let Some(buf) = c.borrow().as_ref() {
                buf.lock().unwrap().extend_from_slice(b);
            }
        });
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Debug and above, of a thread that captures; decided per event, never
/// cached per callsite (`FilterFn` would cache its first answer, which is
/// the very bug this module avoids).
struct Capturing;

impl<S: tracing::Subscriber> tracing_subscriber::layer::Filter<S> for Capturing {
    fn enabled(&self, m: &tracing::Metadata<'_>, _: &tracing_subscriber::layer::Context<'_, S>) -> bool {
        *m.level() <= tracing::Level::DEBUG && CAPTURE.with(|c| c.borrow().is_some())
    }

    fn callsite_enabled(&self, m: &'static tracing::Metadata<'static>) -> tracing::subscriber::Interest {
        if *m.level() <= tracing::Level::DEBUG {
            tracing::subscriber::Interest::sometimes()
        } else {
            tracing::subscriber::Interest::never()
        }
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::DEBUG)
    }
}

/// Starts capturing the debug (and above) logs of this thread. Use from a
/// current-thread test (`#[tokio::test]`): events of tasks on other threads
/// (a multi-thread runtime's workers, `spawn_blocking`) are not captured.
pub fn capture() -> Captured {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let layer = tracing_subscriber::fmt::layer().with_writer(|| ThreadWriter).with_ansi(false).with_filter(Capturing);
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
            .expect("another global tracing subscriber was set in the test process: use support::logs::capture only");
    });
    let buf = Arc::new(Mutex::new(Vec::new()));
    CAPTURE.with(|c| *c.borrow_mut() = Some(buf.clone()));
    Captured { buf }
}
