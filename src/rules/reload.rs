//! Hot reload: a change to the rules directory (file watch, SIGHUP, or a periodic check of
//! the files' hash) loads and validates the whole directory, then swaps the new rules in at
//! once. A bad change keeps the old rules running; it is logged and counted.
//!
//! Kubernetes mounts a ConfigMap as a directory whose files are symlinks through `..data`,
//! a symlink that is replaced atomically on update. So the directory is watched (not the
//! files), events are debounced, and the whole directory is re-read, following symlinks. The
//! periodic hash check catches what a watch can miss (network filesystems, inotify limits).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::{read_dir, version, Mode, RuleOptions, RuleSet};
use crate::telemetry as m;

/// Quiet time after a file event before reloading, so that a multi-file update (or an
/// editor's write-rename dance) is read once, complete.
pub const DEBOUNCE: Duration = Duration::from_millis(300);

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reloaded {
    /// The files did not change.
    Unchanged,
    /// New rules are in use; their version.
    Swapped(String),
    /// The files are invalid; the old rules stay. The errors, one per line.
    Failed(String),
}

/// Where new rules go: swaps them in, returns the rules they replace.
pub type Swap = Arc<dyn Fn(Arc<RuleSet>) -> Arc<RuleSet> + Send + Sync>;

/// The mode's name in `tailsift_rules_info` and the logs: `enforce` or `shadow`.
pub fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Enforce => "enforce",
        Mode::Shadow => "shadow",
    }
}

/// Reloads a rules directory into a swap target.
pub struct Loader {
    dir: PathBuf,
    options: RuleOptions,
    swap: Swap,
    /// The version in use, and the last version that failed (not logged twice).
    current: String,
    failed: Option<String>,
}

impl Loader {
    /// `current` is the version of the rules in use.
    pub fn new(dir: &Path, options: RuleOptions, current: &str, swap: Swap) -> Self {
        Loader {
            dir: dir.to_path_buf(),
            options,
            swap,
            current: current.to_string(),
            failed: None,
        }
    }

    /// Reads the directory and, if its content changed (or `force`), validates and swaps.
    pub fn reload(&mut self, force: bool) -> Reloaded {
        let files = match read_dir(&self.dir) {
            Ok(f) => f,
            Err(e) => return self.fail(None, super::RulesError(e).to_string()),
        };
        let v = version(&files);
        if !force && (v == self.current || self.failed.as_deref() == Some(&v)) {
            return Reloaded::Unchanged;
        }
        match super::parse_all(&self.dir, &files) {
            Ok((rules, redaction)) => {
                let set = RuleSet::checked(rules, self.options.clone(), v.clone())
                    .with_redaction(redaction);
                let n = set.rules().len();
                m::init_rules(set.rules());
                if let Some(r) = set.redaction() {
                    r.register_metrics();
                }
                let new = Arc::new(set);
                let old = (self.swap)(new.clone());
                // Counts the old set gathered since the last decider tick.
                old.flush_metrics();
                // A rule the files no longer have matches nothing: its `tailsift_rule_active`
                // says so rather than keeping the value of its last tick.
                for gone in old
                    .rules()
                    .iter()
                    .filter(|o| new.rules().iter().all(|r| r.name != o.name))
                {
                    metrics::gauge!(m::RULE_ACTIVE, "rule" => gone.name.to_string()).set(0.0);
                }
                metrics::counter!(m::RULES_RELOADS, "result" => m::Reload::Success).increment(1);
                m::set_rules_info(&v, mode_name(self.options.mode));
                tracing::info!(dir = %self.dir.display(), version = %v, previous = %self.current,
                    rules = n, "rules reloaded");
                self.current = v.clone();
                self.failed = None;
                Reloaded::Swapped(v)
            }
            Err(errors) => self.fail(Some(v), super::RulesError(errors).to_string()),
        }
    }

    fn fail(&mut self, v: Option<String>, errors: String) -> Reloaded {
        metrics::counter!(m::RULES_RELOADS, "result" => m::Reload::Failure).increment(1);
        tracing::error!(dir = %self.dir.display(), version = %self.current, errors = %errors,
            "invalid rules: keeping the rules in use");
        self.failed = v;
        Reloaded::Failed(errors)
    }
}

/// A running reloader; stopping it (or dropping it) ends the watch.
pub struct Reloader {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Reloader {
    /// Watches `loader`'s directory, listens for SIGHUP, and checks the files' hash every
    /// `poll` (when non-zero), reloading on each.
    pub fn spawn(mut loader: Loader, poll: Duration) -> Self {
        let (events_tx, mut events) = mpsc::unbounded_channel::<()>();
        let watcher = start_watch(&loader.dir, events_tx);
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let _watcher = watcher; // dropped with the task: ends the watch
            let mut hup = hangups();
            let mut tick = tokio::time::interval(if poll.is_zero() {
                Duration::from_secs(3600 * 24 * 365)
            } else {
                poll
            });
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                let force = tokio::select! {
                    _ = stopped.changed() => break,
                    Some(()) = events.recv() => {
                        // Debounce: wait for a quiet period, then read the directory once.
                        while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, events.recv()).await {}
                        false
                    }
                    Some(()) = hup.recv() => {
                        tracing::info!("SIGHUP: reloading rules");
                        true
                    }
                    _ = tick.tick(), if !poll.is_zero() => false,
                };
                loader.reload(force);
            }
        });
        Reloader { stop, task }
    }

    /// Stops watching and waits for the task to end.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

fn start_watch(dir: &Path, tx: mpsc::UnboundedSender<()>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.as_ref().is_ok_and(|e| !e.kind.is_access()) {
            let _ = tx.send(());
        }
    });
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the rules directory; relying on the periodic check and SIGHUP");
            return None;
        }
    };
    if let Err(e) = watcher.watch(dir, notify::RecursiveMode::NonRecursive) {
        tracing::warn!(error = %e, dir = %dir.display(),
            "cannot watch the rules directory; relying on the periodic check and SIGHUP");
        return None;
    }
    Some(watcher)
}

/// A channel that yields on every SIGHUP (never, where there are no such signals).
fn hangups() -> mpsc::UnboundedReceiver<()> {
    let (tx, rx) = mpsc::unbounded_channel();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::hangup()) {
            Ok(mut s) => {
                tokio::spawn(async move {
                    while s.recv().await.is_some() {
                        if tx.send(()).is_err() {
                            break;
                        }
                    }
                });
            }
            Err(e) => tracing::warn!(error = %e, "cannot listen for SIGHUP"),
        }
    }
    #[cfg(not(unix))]
    drop(tx);
    rx
}
