//! What asks for a config reload: a debounced watcher on the config file that
//! survives renames, re-creation and Kubernetes ConfigMap swaps, and SIGHUP.

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hasher};
use std::io::{ErrorKind, Read};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};

/// Events buffered between notify's thread and ours; past this a flag stands in for them.
const QUEUE: usize = 1024;
/// How often a vanished directory is looked for again.
const RETRY: Duration = Duration::from_secs(1);
/// A steady stream of writes still applies after this many debounce periods.
const MAX_DELAY: u32 = 5;
/// Symlink hops followed, as the kernel's own limit.
const MAX_HOPS: usize = 40;
/// Bytes hashed; a config file is far smaller, a misdirected symlink may not be.
const HASH_LIMIT: u64 = 64 << 20;

/// Why a reload was asked for (for logs and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReloadTrigger {
    FileChanged,
    Signal,
    Api,
}

impl ReloadTrigger {
    /// The label in logs and metrics: `file`, `signal`, `api`.
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadTrigger::FileChanged => "file",
            ReloadTrigger::Signal => "signal",
            ReloadTrigger::Api => "api",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("config path {} has no parent directory or no file name", .0.display())]
    BadPath(PathBuf),
    #[error("cannot watch {}: {source}", path.display())]
    Watch {
        path: PathBuf,
        source: notify::Error,
    },
    #[error("cannot start the config watcher thread: {0}")]
    Thread(std::io::Error),
}

/// A running config file watcher; dropping it stops the watcher.
#[derive(Debug)]
pub struct FileWatcher {
    stop: Arc<AtomicBool>,
    wake: SyncSender<Msg>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for FileWatcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // A full queue means the thread is busy and will see the flag anyway.
        let _ = self.wake.try_send(Msg::Wake);
        if let Some(thread) = self.thread.take() {
            // Dropped inside `on_change`: joining would wait for ourselves.
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

#[derive(Debug)]
enum Msg {
    Event(notify::Result<Event>),
    Wake,
}

/// Watches the config file and calls `on_change` (from a background thread) at most once per debounce period after the file's content may have changed: writes in place, editors' write-to-temp-then-rename, deletion followed by re-creation, and Kubernetes ConfigMap updates (the file is a symlink `config.yaml -> ..data/config.yaml` and `..data` is a symlink atomically swapped to a new timestamped directory). Keep watching after any of these (watch the parent directory, not the inode; re-resolve symlinks). Drop the returned handle to stop.
///
/// A call comes once no relevant event has arrived for `debounce` (or after
/// five periods of continuous writes), and only when what the path resolves
/// to, its content or its modification time differ from the last look. A
/// missing file causes no call: its re-creation does.
pub fn watch_file(
    path: &Path,
    debounce: Duration,
    on_change: impl Fn() + Send + Sync + 'static,
) -> Result<FileWatcher, ReloadError> {
    let path = std::path::absolute(path).map_err(|_| ReloadError::BadPath(path.to_path_buf()))?;
    let home = match (path.parent(), path.file_name()) {
        (Some(dir), Some(_)) => dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf()),
        _ => return Err(ReloadError::BadPath(path)),
    };
    let (tx, rx) = mpsc::sync_channel(QUEUE);
    let overflowed = Arc::new(AtomicBool::new(false));
    let notify_tx = tx.clone();
    let flag = Arc::clone(&overflowed);
    let watch_error = |source| ReloadError::Watch {
        path: home.clone(),
        source,
    };
    let mut watcher = notify::recommended_watcher(move |event| {
        if notify_tx.try_send(Msg::Event(event)).is_err() {
            flag.store(true, Ordering::Release);
        }
    })
    .map_err(watch_error)?;
    // A directory missing at start is a wrong path, not an outage to wait out.
    watcher
        .watch(&home, RecursiveMode::NonRecursive)
        .map_err(watch_error)?;
    let mut state = State {
        path,
        debounce,
        on_change,
        watcher,
        watched: HashSet::from([home]),
        wanted: HashSet::new(),
        failing: HashSet::new(),
        keys: Vec::new(),
        retry_at: None,
        last: Fingerprint::Missing,
    };
    state.last = state.refresh();
    let stop = Arc::new(AtomicBool::new(false));
    let stop_thread = Arc::clone(&stop);
    let thread = std::thread::Builder::new()
        .name("config-watcher".into())
        .spawn(move || state.run(&rx, &stop_thread, &overflowed))
        .map_err(ReloadError::Thread)?;
    Ok(FileWatcher {
        stop,
        wake: tx,
        thread: Some(thread),
    })
}

/// Calls `on_signal` on every SIGHUP until the returned task is aborted (tokio signal stream; Unix only, a no-op elsewhere).
///
/// Call it inside a Tokio runtime. The handler is installed before this
/// returns, so a SIGHUP sent afterwards never hits the default action (exit).
pub fn spawn_sighup(on_signal: impl Fn() + Send + Sync + 'static) -> tokio::task::JoinHandle<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let hangups = signal(SignalKind::hangup());
        tokio::spawn(async move {
            let mut hangups = match hangups {
                Ok(hangups) => hangups,
                Err(error) => {
                    tracing::error!(%error, "cannot listen for SIGHUP; reload through the file or the API");
                    return;
                }
            };
            while hangups.recv().await.is_some() {
                tracing::info!(
                    trigger = ReloadTrigger::Signal.as_str(),
                    "config reload requested"
                );
                call_guarded(&on_signal);
            }
        })
    }
    #[cfg(not(unix))]
    {
        drop(on_signal);
        tokio::spawn(async {})
    }
}

/// The earlier of two optional instants (`None` is never).
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Runs a caller's callback; a panic in it must not end the watching.
fn call_guarded(callback: &(impl Fn() + ?Sized)) {
    if catch_unwind(AssertUnwindSafe(callback)).is_err() {
        tracing::error!("the config reload callback panicked");
    }
}

/// What the config path showed at the last look.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fingerprint {
    /// Nothing to read: wait for the file to come back rather than fail a reload.
    Missing,
    /// Unreadable for another reason: always call, the reload reports why.
    Unreadable,
    Present {
        target: PathBuf,
        len: u64,
        modified: Option<SystemTime>,
        hash: u64,
    },
}

fn fingerprint(path: &Path) -> Fingerprint {
    let read = || -> std::io::Result<Fingerprint> {
        let target = std::fs::canonicalize(path)?;
        let mut file = std::fs::File::open(&target)?;
        let meta = file.metadata()?;
        let mut hasher = DefaultHasher::new();
        let mut reader = (&mut file).take(HASH_LIMIT);
        let mut buf = [0u8; 8192];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => hasher.write(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Fingerprint::Present {
            target,
            len: meta.len(),
            modified: meta.modified().ok(),
            hash: hasher.finish(),
        })
    };
    match read() {
        Ok(fingerprint) => fingerprint,
        Err(e) if e.kind() == ErrorKind::NotFound => Fingerprint::Missing,
        Err(_) => Fingerprint::Unreadable,
    }
}

/// Follows `path` through its symlinks. Returns every path on the way, as
/// written and under its directory's canonical name (the one notify reports),
/// and those canonical directories, the first being the path's own.
fn resolve(path: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let (mut keys, mut dirs) = (Vec::new(), Vec::new());
    let mut current = path.to_path_buf();
    for _ in 0..MAX_HOPS {
        if let (Some(parent), Some(name)) = (current.parent(), current.file_name()) {
            let dir = parent
                .canonicalize()
                .unwrap_or_else(|_| parent.to_path_buf());
            keys.push(dir.join(name));
            dirs.push(dir);
        }
        keys.push(current.clone());
        match std::fs::read_link(&current) {
            // An absolute target replaces the base in `join`.
            Ok(target) => current = current.parent().unwrap_or(Path::new("/")).join(target),
            Err(_) => break,
        }
    }
    (keys, dirs)
}

struct State<F> {
    path: PathBuf,
    debounce: Duration,
    on_change: F,
    watcher: RecommendedWatcher,
    /// Directories with a live watch.
    watched: HashSet<PathBuf>,
    /// Directories that should have one: those the path resolves through.
    wanted: HashSet<PathBuf>,
    /// Directories whose watch failed, warned about once per outage.
    failing: HashSet<PathBuf>,
    /// Paths whose change (or their ancestors') can change what the path reads.
    keys: Vec<PathBuf>,
    retry_at: Option<Instant>,
    last: Fingerprint,
}

impl<F: Fn()> State<F> {
    fn run(&mut self, rx: &Receiver<Msg>, stop: &AtomicBool, overflowed: &AtomicBool) {
        // First and latest relevant event not yet acted on.
        let mut pending: Option<(Instant, Instant)> = None;
        while !stop.load(Ordering::Acquire) {
            let due = pending.and_then(|(first, last)| self.due(first, last));
            let msg = match earliest(due, self.retry_at) {
                Some(at) => rx.recv_timeout(at.saturating_duration_since(Instant::now())),
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            let (mut relevant, mut resync) = (false, false);
            match msg {
                Ok(Msg::Event(Ok(event))) => (relevant, resync) = self.classify(&event),
                Ok(Msg::Event(Err(error))) => {
                    tracing::warn!(%error, path = %self.path.display(), "config watcher error");
                    relevant = true;
                }
                Ok(Msg::Wake) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            // Dropped events may have been about the file: look, to be sure.
            relevant |= overflowed.swap(false, Ordering::AcqRel);
            let now = Instant::now();
            if resync || self.retry_at.is_some_and(|at| at <= now) {
                // A directory (re)gained its watch: the file may have arrived unseen.
                relevant |= self.rewatch();
            }
            if relevant {
                pending = Some((pending.map_or(now, |(first, _)| first), now));
            }
            if let Some((first, last)) = pending
                && self.due(first, last).is_some_and(|at| at <= now)
            {
                pending = None;
                self.check();
            }
        }
    }

    fn due(&self, first: Instant, last: Instant) -> Option<Instant> {
        earliest(
            last.checked_add(self.debounce),
            first.checked_add(self.debounce.saturating_mul(MAX_DELAY)),
        )
    }

    /// Whether the event may concern the config, and whether it hit a watched
    /// directory itself: deleted or moved, its watch is dead or misplaced, so
    /// it is dropped here for `reconcile` to set up again.
    fn classify(&mut self, event: &Event) -> (bool, bool) {
        match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => {}
            // Opens and reads, ours and the reload's included, change nothing.
            EventKind::Access(_) => return (false, false),
            _ => {}
        }
        let mut on_dir = false;
        if matches!(
            event.kind,
            EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_))
        ) {
            for path in &event.paths {
                if self.watched.remove(path) {
                    // notify may have dropped the watch itself already.
                    let _ = self.watcher.unwatch(path);
                    // Routine for a ConfigMap's old data directory; a real
                    // outage is warned about when the watch cannot be renewed.
                    tracing::debug!(dir = %path.display(), "watched directory removed or moved");
                    on_dir = true;
                }
            }
        }
        let relevant = event.need_rescan()
            || event.paths.is_empty()
            || event
                .paths
                .iter()
                .any(|p| self.keys.iter().any(|key| key.starts_with(p)));
        (relevant || on_dir, on_dir)
    }

    /// Looks at the path again and calls `on_change` if it shows something new.
    fn check(&mut self) {
        let now = self.refresh();
        let call = match &now {
            Fingerprint::Missing => {
                if self.last != Fingerprint::Missing {
                    tracing::warn!(path = %self.path.display(), "config file is gone; waiting for it to come back");
                }
                false
            }
            Fingerprint::Unreadable => true,
            present => *present != self.last,
        };
        self.last = now;
        if call {
            tracing::info!(trigger = ReloadTrigger::FileChanged.as_str(), path = %self.path.display(), "config reload requested");
            call_guarded(&self.on_change);
        }
    }

    /// Re-resolves the path's symlinks and moves the watches along; a ConfigMap
    /// swap makes the old data directory unwanted before it is deleted.
    fn rewatch(&mut self) -> bool {
        let (keys, dirs) = resolve(&self.path);
        self.keys = keys;
        self.wanted = dirs.into_iter().collect();
        self.reconcile()
    }

    fn refresh(&mut self) -> Fingerprint {
        self.rewatch();
        fingerprint(&self.path)
    }

    /// Watches exactly the wanted directories, as far as they exist. Returns
    /// whether a watch was added.
    fn reconcile(&mut self) -> bool {
        let stale: Vec<PathBuf> = self.watched.difference(&self.wanted).cloned().collect();
        for dir in stale {
            // Most likely gone with its directory already; nothing to do then.
            let _ = self.watcher.unwatch(&dir);
            self.watched.remove(&dir);
        }
        let missing: Vec<PathBuf> = self.wanted.difference(&self.watched).cloned().collect();
        let mut added = false;
        for dir in missing {
            match self.watcher.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    if self.failing.remove(&dir) {
                        tracing::info!(dir = %dir.display(), "watching the config directory again");
                    }
                    self.watched.insert(dir);
                    added = true;
                }
                Err(error) => {
                    if self.failing.insert(dir.clone()) {
                        tracing::warn!(%error, dir = %dir.display(), "cannot watch the config directory; retrying every second");
                    }
                }
            }
        }
        self.failing.retain(|dir| self.wanted.contains(dir));
        self.retry_at = (!self.failing.is_empty()).then(|| Instant::now() + RETRY);
        added
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    const DEBOUNCE: Duration = Duration::from_millis(200);
    const WAIT: Duration = Duration::from_secs(5);
    const QUIET: Duration = Duration::from_millis(500);

    fn watch(path: &Path) -> (FileWatcher, Receiver<()>) {
        let (tx, rx) = mpsc::channel();
        let on_change = move || {
            let _ = tx.send(());
        };
        (watch_file(path, DEBOUNCE, on_change).expect("watch"), rx)
    }

    fn called(rx: &Receiver<()>) {
        rx.recv_timeout(WAIT).expect("a call within 5 s");
    }

    fn not_called(rx: &Receiver<()>) {
        assert!(rx.recv_timeout(QUIET).is_err(), "unexpected call");
    }

    /// A tempdir with `config.yaml`, watched.
    fn setup() -> (tempfile::TempDir, PathBuf, FileWatcher, Receiver<()>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.yaml");
        fs::write(&path, "version: 1\n").expect("write");
        let (watcher, rx) = watch(&path);
        (dir, path, watcher, rx)
    }

    #[test]
    fn in_place_write_calls_once() {
        let (_dir, path, _watcher, rx) = setup();
        fs::write(&path, "version: 2\n").expect("write");
        called(&rx);
        not_called(&rx);
    }

    #[test]
    fn rename_over_calls_and_later_writes_still_call() {
        let (dir, path, _watcher, rx) = setup();
        let temp = dir.path().join(".config.yaml.tmp");
        fs::write(&temp, "version: 2\n").expect("write");
        fs::rename(&temp, &path).expect("rename");
        called(&rx);
        fs::write(&path, "version: 3\n").expect("write");
        called(&rx);
    }

    #[test]
    fn delete_then_recreate_calls_on_recreation() {
        let (_dir, path, _watcher, rx) = setup();
        fs::remove_file(&path).expect("remove");
        not_called(&rx);
        fs::write(&path, "version: 2\n").expect("write");
        called(&rx);
    }

    #[test]
    fn burst_of_writes_coalesces() {
        let (_dir, path, _watcher, rx) = setup();
        for i in 0..20 {
            fs::write(&path, format!("version: {i}\n")).expect("write");
        }
        called(&rx);
        let extra = std::iter::from_fn(|| rx.recv_timeout(QUIET).ok()).count();
        assert!(extra <= 1, "{} calls for one burst", extra + 1);
    }

    #[test]
    fn sibling_files_do_not_call() {
        let (dir, path, _watcher, rx) = setup();
        let sibling = dir.path().join("other.yaml");
        fs::write(&sibling, "x: 1\n").expect("write");
        fs::rename(&sibling, dir.path().join("moved.yaml")).expect("rename");
        fs::read(&path).expect("read");
        not_called(&rx);
        fs::write(&path, "version: 2\n").expect("write");
        called(&rx);
    }

    /// The layout kubelet writes for a ConfigMap volume.
    fn configmap_generation(dir: &Path, generation: u32) {
        let data = dir.join(format!("..2026_01_01_00_00_0{generation}"));
        fs::create_dir(&data).expect("mkdir");
        fs::write(data.join("config.yaml"), format!("version: {generation}\n")).expect("write");
        let temp = dir.join("..data_tmp");
        symlink(data.file_name().expect("name"), &temp).expect("symlink");
        let old = fs::read_link(dir.join("..data")).ok();
        fs::rename(&temp, dir.join("..data")).expect("swap");
        if let Some(old) = old {
            fs::remove_dir_all(dir.join(old)).expect("remove old");
        }
    }

    #[test]
    fn configmap_swaps_call_each_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        configmap_generation(dir.path(), 1);
        let path = dir.path().join("config.yaml");
        symlink("..data/config.yaml", &path).expect("symlink");
        let (_watcher, rx) = watch(&path);
        configmap_generation(dir.path(), 2);
        called(&rx);
        not_called(&rx);
        configmap_generation(dir.path(), 3);
        called(&rx);
        assert_eq!(fs::read_to_string(&path).expect("read"), "version: 3\n");
    }

    #[test]
    fn vanished_directory_is_watched_again() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("conf");
        fs::create_dir(&dir).expect("mkdir");
        let path = dir.join("config.yaml");
        fs::write(&path, "version: 1\n").expect("write");
        let (_watcher, rx) = watch(&path);
        fs::remove_dir_all(&dir).expect("remove dir");
        not_called(&rx);
        fs::create_dir(&dir).expect("mkdir");
        fs::write(&path, "version: 2\n").expect("write");
        called(&rx);
        fs::write(&path, "version: 3\n").expect("write");
        called(&rx);
    }

    #[test]
    fn dropping_the_handle_stops_calls() {
        let (_dir, path, watcher, rx) = setup();
        drop(watcher);
        fs::write(&path, "version: 2\n").expect("write");
        // The callback went with the thread: no call can come any more.
        let got = rx.recv_timeout(QUIET);
        assert_eq!(got, Err(RecvTimeoutError::Disconnected));
    }

    #[test]
    fn a_panicking_callback_does_not_stop_watching() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.yaml");
        fs::write(&path, "version: 1\n").expect("write");
        let (tx, rx) = mpsc::channel();
        let _watcher = watch_file(&path, DEBOUNCE, move || {
            let _ = tx.send(());
            panic!("callback failure");
        })
        .expect("watch");
        fs::write(&path, "version: 2\n").expect("write");
        called(&rx);
        fs::write(&path, "version: 3\n").expect("write");
        called(&rx);
    }

    #[tokio::test]
    async fn sighup_calls() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let task = spawn_sighup(move || {
            let _ = tx.send(());
        });
        let status = std::process::Command::new("kill")
            .args(["-HUP", &std::process::id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        // Other SIGHUPs in this process may add calls: at least one is ours.
        let got = tokio::time::timeout(WAIT, rx.recv()).await;
        assert!(matches!(got, Ok(Some(()))));
        task.abort();
    }
}
