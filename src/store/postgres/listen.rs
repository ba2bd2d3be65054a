//! Wake-ups from the database: a connection of its own that `LISTEN`s for what any host
//! announces (a job to run now or at a new time, a cancel of a running job), connecting again
//! with backoff whenever it is lost.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, NoTls};

use super::{PgStore, CHANNEL_CANCEL, CHANNEL_JOBS, RECONNECT_FIRST, RECONNECT_MAX};

/// How long one wait for a notification lasts before the stop flag is looked at again.
const TICK: Duration = Duration::from_millis(250);

/// What a listener hears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// Listening (again): whatever was announced before may have been missed, look.
    Listening,
    /// A job may run now, or at a new time.
    Jobs,
    /// Someone cancelled running job `0`.
    Cancel(String),
}

/// The listening thread; it ends soon after this is dropped.
pub struct Listener {
    stop: Arc<AtomicBool>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl PgStore {
    /// Listens on a connection of its own, calling `on` for each notice (from a thread of its
    /// own) until `on` returns `false` or the listener is dropped. A lost connection is logged
    /// and connected again with a growing pause; `on` then hears [`Notice::Listening`].
    pub fn listen(&self, on: impl FnMut(Notice) -> bool + Send + 'static) -> Listener {
        let stop = Arc::new(AtomicBool::new(false));
        let config = self.config.clone();
        let target = self.target.clone();
        let flag = Arc::clone(&stop);
        thread::spawn(move || listen_loop(&config, &target, &flag, on));
        Listener { stop }
    }
}

fn subscribe(config: &postgres::Config) -> Result<Client, postgres::Error> {
    let mut client = config.connect(NoTls)?;
    client.batch_execute(&format!("LISTEN {CHANNEL_JOBS}; LISTEN {CHANNEL_CANCEL}"))?;
    Ok(client)
}

fn listen_loop(
    config: &postgres::Config,
    target: &str,
    stop: &AtomicBool,
    mut on: impl FnMut(Notice) -> bool,
) {
    let mut delay = Duration::ZERO;
    let mut lost = false;
    while !stop.load(Ordering::Relaxed) {
        let mut client = match subscribe(config) {
            Ok(c) => c,
            Err(e) => {
                delay = (delay * 2).clamp(RECONNECT_FIRST, RECONNECT_MAX);
                tracing::warn!(
                    "cannot listen to the database at {target}: {e}; trying again in {}ms",
                    delay.as_millis()
                );
                sleep_unless_stopped(delay, stop);
                continue;
            }
        };
        if lost {
            tracing::info!("listening to the database at {target} again");
        }
        delay = Duration::ZERO;
        if !on(Notice::Listening) {
            return;
        }
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let heard = client.notifications().timeout_iter(TICK).next();
            match heard {
                Ok(Some(n)) => {
                    let notice = match n.channel() {
                        CHANNEL_JOBS => Notice::Jobs,
                        CHANNEL_CANCEL => Notice::Cancel(n.payload().to_string()),
                        _ => continue,
                    };
                    if !on(notice) {
                        return;
                    }
                }
                Ok(None) if !client.is_closed() => {}
                Ok(None) => {
                    tracing::warn!(
                        "lost the listening connection to the database at {target}; \
                         connecting again"
                    );
                    break;
                }
                Err(e) => {
                    tracing::warn!(
                        "lost the listening connection to the database at {target}: {e}; \
                         connecting again"
                    );
                    break;
                }
            }
        }
        lost = true;
    }
}

fn sleep_unless_stopped(total: Duration, stop: &AtomicBool) {
    let mut left = total;
    while !left.is_zero() && !stop.load(Ordering::Relaxed) {
        let step = left.min(TICK);
        thread::sleep(step);
        left -= step;
    }
}
