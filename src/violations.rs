//! Violation events: what a rejected (or shadow-rejected) request tells the
//! rest of the world. Handlers run on their own thread behind a bounded queue,
//! so a slow handler can never slow a request; when the queue is full the
//! event is dropped and counted.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};

use parking_lot::{Mutex, RwLock};
use serde::Serialize;

use crate::limit::{NANOS_PER_SEC, Nanos};

/// One rule broken by one identity.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Violation {
    /// Unix time in seconds.
    pub time: f64,
    pub identity: String,
    pub client_ip: IpAddr,
    pub rule: String,
    pub route: Option<String>,
    /// Requests the identity had made in the window, this one included.
    pub requests_made: u64,
    pub limit: u64,
    /// True for a shadow rule: reported, not enforced.
    pub shadow: bool,
}

impl Violation {
    pub fn time_nanos(&self) -> Nanos {
        (self.time * NANOS_PER_SEC as f64) as Nanos
    }
}

pub type ViolationHandler = Arc<dyn Fn(&Violation) + Send + Sync>;

/// How many events may wait for the handlers.
pub const QUEUE_CAPACITY: usize = 4096;

#[derive(Default)]
pub struct ViolationHub {
    handlers: Arc<RwLock<Vec<ViolationHandler>>>,
    sender: Mutex<Option<SyncSender<Violation>>>,
    has_handlers: std::sync::atomic::AtomicBool,
    dropped: AtomicU64,
    /// Events queued for the handlers (not dropped).
    accepted: AtomicU64,
    delivered: Arc<AtomicU64>,
}

impl ViolationHub {
    pub fn new() -> ViolationHub {
        ViolationHub::default()
    }

    /// Registers a handler; it is called on the hub's own thread, in order.
    pub fn subscribe(&self, handler: impl Fn(&Violation) + Send + Sync + 'static) {
        self.handlers.write().push(Arc::new(handler));
        let mut sender = self.sender.lock();
        if sender.is_none() {
            let (tx, rx) = mpsc::sync_channel::<Violation>(QUEUE_CAPACITY);
            let handlers = Arc::clone(&self.handlers);
            let delivered = Arc::clone(&self.delivered);
            let spawned = std::thread::Builder::new()
                .name("violation-handlers".into())
                .spawn(move || {
                    while let Ok(event) = rx.recv() {
                        let current: Vec<ViolationHandler> = handlers.read().clone();
                        for handler in &current {
                            // A panicking handler must not take the others down.
                            let call = std::panic::AssertUnwindSafe(|| handler(&event));
                            if std::panic::catch_unwind(call).is_err() {
                                tracing::error!(rule = %event.rule, "a violation handler panicked");
                            }
                        }
                        delivered.fetch_add(1, Ordering::Release);
                    }
                });
            match spawned {
                Ok(_) => *sender = Some(tx),
                Err(error) => tracing::error!(%error, "cannot start the violation handler thread"),
            }
        }
        self.has_handlers.store(sender.is_some(), Ordering::Release);
    }

    /// Hands an event to the handlers without waiting.
    pub fn publish(&self, event: Violation) {
        if !self.has_handlers.load(Ordering::Acquire) {
            return;
        }
        let sender = self.sender.lock().clone();
        if let Some(sender) = sender {
            // Counted first: `settled` must never see a delivery it has not
            // seen accepted.
            self.accepted.fetch_add(1, Ordering::AcqRel);
            match sender.try_send(event) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                    self.accepted.fetch_sub(1, Ordering::AcqRel);
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Events dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Events every handler has been called with.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Whether every event published so far has reached the handlers.
    pub fn settled(&self) -> bool {
        self.delivered.load(Ordering::Acquire) >= self.accepted.load(Ordering::Acquire)
    }
}
