//! Termination signals: on the first SIGINT or SIGTERM the load generator closes every
//! connection cleanly. (The server waits for a second signal too, during its drain
//! delay: `wsscale::drain`.)

/// Resolves on the first SIGINT or SIGTERM with the signal's name; an error when the
/// handlers cannot be installed (the caller says what that means for its user).
pub async fn terminated() -> Result<&'static str, std::io::Error> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(tokio::select! {
        _ = interrupt.recv() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    })
}
