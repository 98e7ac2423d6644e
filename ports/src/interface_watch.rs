//! The monitor thread of a port on a host interface (TAP, AF_XDP): every 250 ms it checks
//! that the port's attachment still works, takes the port down with one warning when the
//! interface is gone (someone deleted it), and brings it up again once the kind says it
//! can. What "works" and "up again" mean is the kind's ([`Watched`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::log_limit::LogLimiter;
use crate::port::{Attachment, PortHandle};

/// How often a port checks that its interface is still there, or back.
const EVERY: Duration = Duration::from_millis(250);

/// What the attachment is, as the kind sees it.
pub(crate) enum Health {
    /// The kind's, and working.
    Up,
    /// The kind's, and its interface is gone: the port goes down.
    Gone,
}

/// A port kind's side of the monitor.
pub(crate) trait Watched: Send + 'static {
    /// How the log lines name what went and came back ("TAP interface").
    const WHAT: &'static str;
    fn ifname(&self) -> &str;
    /// Checks `handle`'s current attachment `att`; `None` if it is not of this kind.
    fn health(&mut self, handle: &PortHandle, att: &Attachment) -> Option<Health>;
    /// Whether trying to come back may succeed now.
    fn may_return(&self) -> bool;
    /// Opens the interface again and publishes the new attachment.
    fn reopen(&mut self, handle: &PortHandle) -> Result<(), String>;
}

/// A running monitor thread.
pub(crate) struct Watch {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Watch {
    /// Starts a thread named `name` watching `handle`'s attachment for `kind`.
    pub fn start(
        name: String,
        handle: Arc<PortHandle>,
        mut kind: impl Watched,
    ) -> std::io::Result<Watch> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || watch(&handle, &mut kind, &stopping))?;
        Ok(Watch {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread and withdraws the port's attachment from the workers, its link
    /// still up (another process carries the port on). Returns the attachment withdrawn.
    pub fn stop_for_handover(&mut self, handle: &PortHandle) -> Option<Arc<Attachment>> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
        handle.withdraw()
    }

    /// Stops the thread and withdraws the port's attachment from the workers. Returns
    /// false if it was stopped already.
    pub fn stop(&mut self, handle: &PortHandle) -> bool {
        self.stop.store(true, Ordering::Relaxed);
        let Some(t) = self.thread.take() else {
            return false;
        };
        t.thread().unpark();
        let _ = t.join();
        handle.detach();
        handle.set_connected(false);
        true
    }
}

fn watch<W: Watched>(handle: &PortHandle, kind: &mut W, stop: &AtomicBool) {
    let mut failures = LogLimiter::new(Duration::from_secs(60));
    while !stop.load(Ordering::Relaxed) {
        std::thread::park_timeout(EVERY);
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let current = handle.attachment();
        match current.as_deref().map(|att| kind.health(handle, att)) {
            Some(Some(Health::Up)) | Some(None) => {}
            Some(Some(Health::Gone)) => {
                handle.detach();
                handle.set_connected(false);
                tracing::warn!(
                    port = %handle.name(),
                    ifname = %kind.ifname(),
                    "{} is gone (deleted?): the port is down until it is back",
                    W::WHAT
                );
            }
            None if !kind.may_return() => {}
            None => match kind.reopen(handle) {
                Ok(()) => tracing::info!(
                    port = %handle.name(),
                    ifname = %kind.ifname(),
                    "{} is back: the port is up",
                    W::WHAT
                ),
                Err(error) => {
                    if let Some(suppressed) = failures.check() {
                        tracing::warn!(
                            port = %handle.name(),
                            ifname = %kind.ifname(),
                            error = %error,
                            suppressed,
                            "cannot open the {} again",
                            W::WHAT
                        );
                    }
                }
            },
        }
    }
}
