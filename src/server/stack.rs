//! A *stack*: one execution model with one engine, and what becomes of a connection once
//! its HTTP phase has accepted the upgrade. [`super::run`] picks the stack and the
//! transport under it (plain TCP or TLS, [`super::transport`]) from the configuration
//! once, and the accept loop and the HTTP phase are generic over both, so no connection
//! path asks which mode, engine or scheme it runs:
//!
//! | stack | before the 101 ([`Stack::answer`]) | after it ([`Stack::connection`]) |
//! |---|---|---|
//! | [`super::tasks::TasksLean`] | 101 | the session in the same task |
//! | [`super::stock::TasksStock`] | axum's `WebSocketUpgrade` | (axum's own task) |
//! | [`super::threads::Threads`]`<Lean>` | start the thread, 101 | hand the socket to it |
//! | [`super::threads::Threads`]`<Blocking>` | start the thread, 101 | hand the socket to it |
//!
//! Everything up to the answer — accept, the handshake bound, `handshake::check`, the
//! connection permit, refusals — is the same code for every stack.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::Request;
use axum::response::Response;
use tokio::sync::OwnedSemaphorePermit;

use super::shared::Shared;
use super::transport::Transport;
use crate::deflate::Agreement;
use crate::handshake::Accepted;

/// An execution model with an engine, over transport `T`.
pub(crate) trait Stack<T: Transport>: Send + Sync + 'static {
    /// What the handler reserves for the session before the 101, and the HTTP phase
    /// hands on with the socket: threads mode's connection thread (so a thread the OS
    /// refuses is still answered with a 503); nothing in tasks mode.
    type Reserved: Send + 'static;

    /// Whether the engine accepts permessage-deflate offers (`--deflate`): the lean one
    /// does; tungstenite cannot, and declines.
    const NEGOTIATES_DEFLATE: bool = false;

    /// Answers an upgrade request that passed `handshake::check` and holds a connection
    /// permit (in the /ws handler): 101, or a refusal.
    fn answer(
        shared: &Arc<Shared>,
        request: Request,
        permit: OwnedSemaphorePermit,
        accepted: Accepted,
    ) -> impl Future<Output = Response> + Send;

    /// The task of one TCP connection from accept to close, given its HTTP phase (which
    /// yields the upgraded connection, or nothing when the request was answered
    /// otherwise).
    fn connection(
        http: impl Future<Output = Option<Upgraded<T::Io, Self::Reserved>>> + Send + 'static,
        shared: Arc<Shared>,
    ) -> impl Future<Output = ()> + Send + 'static;
}

/// A connection after its 101: its IO (the socket, under TLS or not), the bytes that came
/// after the request, the connection's permit, and what the handler reserved for it.
pub(crate) struct Upgraded<Io, Reserved = ()> {
    pub stream: Io,
    pub peer: SocketAddr,
    pub early: Vec<u8>,
    pub permit: OwnedSemaphorePermit,
    pub reserved: Reserved,
    /// permessage-deflate, when the 101 agreed to it (the lean engine only).
    pub deflate: Option<Agreement>,
}
