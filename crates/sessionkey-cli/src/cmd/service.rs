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

/// From now on, SIGHUP is logged as changing nothing instead of killing the process (a
/// stray `kill -HUP`, or a reload from an old unit). The handler is installed before this
/// returns, so call it before [`ready`]. Reloading configuration on SIGHUP is not
/// implemented yet; restart the service to apply a changed file.
pub(crate) fn ignore_hangups(what: &'static str) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(hup) => hup,
        Err(e) => {
            tracing::warn!("{what}: cannot handle SIGHUP ({e}); it will stop the process");
            return;
        }
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::warn!(
                "{what}: SIGHUP received; reloading is not supported yet, nothing changed \
                 (restart the service to apply a changed configuration)"
            );
        }
    });
}
