//! Running under a service manager: readiness for systemd's `Type=notify` units.

/// Tell systemd (when it started us with `NOTIFY_SOCKET`) that every listener is bound,
/// so units ordered after this one start only once connections can be accepted. Without
/// `NOTIFY_SOCKET` this does nothing; a failure to notify is logged, not fatal (systemd
/// then stops the unit at its start timeout, which says more than a crash would).
pub(crate) fn ready(status: &str) {
    use sd_notify::NotifyState;
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    match sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(status)]) {
        Ok(()) => tracing::debug!("told systemd: ready ({status})"),
        Err(e) => tracing::warn!("cannot tell systemd the service is ready: {e}"),
    }
}

/// SIGHUPs, from now on (the handler is installed before this returns, so call it before
/// [`ready`]): each one asks `what` to reload its configuration. Without a handler (it
/// could not be installed, which is logged) the channel is closed at once, and SIGHUP
/// keeps its default action.
pub(crate) fn hangups(what: &'static str) -> tokio::sync::mpsc::Receiver<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    match signal(SignalKind::hangup()) {
        Ok(mut hup) => {
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    // A reload already pending covers this one too.
                    let _ = tx.try_send(());
                }
            });
        }
        Err(e) => tracing::warn!("{what}: cannot handle SIGHUP ({e}); it will stop the process"),
    }
    rx
}
