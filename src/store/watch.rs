//! Watches directories for changes and reports them, debounced.
//!
//! A directory is watched non-recursively: edits in place, new files, renames,
//! and the atomic `..data` symlink swap with which Kubernetes updates a
//! ConfigMap volume all show up as events on the directory itself.

use std::path::Path;
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Keeps the OS watch alive; dropping it stops watching.
pub struct DirWatcher {
    _watcher: RecommendedWatcher,
}

/// Watches `dir` and sends `()` on a channel whenever something in it changed.
///
/// Events are coalesced: the receiver sees one message however many events
/// arrived before it looked.
pub fn watch_dir(dir: &Path) -> notify::Result<(DirWatcher, mpsc::Receiver<()>)> {
    let (sender, receiver) = mpsc::channel(1);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let relevant = match &event {
            Ok(event) => !matches!(event.kind, notify::EventKind::Access(_)),
            Err(_) => true,
        };
        if relevant {
            // A full channel already holds a pending change; dropping this one
            // loses nothing.
            let _ = sender.try_send(());
        }
    })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    Ok((DirWatcher { _watcher: watcher }, receiver))
}

/// Waits for the next change and then for `quiet` to pass with no further
/// change, so that a burst of writes causes one reload; a directory that never
/// goes quiet still reloads every ten `quiet` periods (at least every second).
/// Returns `false` when the watcher is gone.
pub async fn next_settled_change(receiver: &mut mpsc::Receiver<()>, quiet: Duration) -> bool {
    if receiver.recv().await.is_none() {
        return false;
    }
    let deadline = tokio::time::Instant::now() + (quiet * 10).max(Duration::from_secs(1));
    loop {
        let wait = quiet.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        if wait.is_zero() {
            return true;
        }
        match tokio::time::timeout(wait, receiver.recv()).await {
            Ok(Some(())) => continue,
            Ok(None) => return false,
            Err(_elapsed) => return true,
        }
    }
}
