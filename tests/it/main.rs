//! Integration tests: one binary, a module per area. Every test runs the real server on
//! 127.0.0.1:0 — `wsscale serve` as a child process, or (in_process.rs) the library's
//! `server::run` — and talks to it with real clients.

// A test binary has no public API; its `pub` items are for sibling modules.
#![allow(unreachable_pub)]

mod browser;
mod chromium_client;
mod compare;
mod conformance;
mod deflate;
mod deploy;
mod docs;
mod faults;
mod fleet;
mod hostile;
mod in_process;
mod live;
mod load;
mod load_deflate;
mod load_tls;
mod memory;
mod metrics;
mod push;
mod reconnect;
mod segments;
mod server;
mod stack;
mod support;
mod tls;

/// Runs an async test body once per execution model (lean engine), as two named tests;
/// the body takes a [`support::Kind`].
macro_rules! both_modes {
    ($($name:ident),* $(,)?) => {
        $crate::servers!([$($name),*]; tasks: "tasks" "lean" "ws", threads: "threads" "lean" "ws");
    };
}
pub(crate) use both_modes;

/// Runs an async test body once per execution model, engine and scheme (ws, wss), as eight
/// named tests.
macro_rules! every_stack {
    ($($name:ident),* $(,)?) => {
        $crate::servers!(
            [$($name),*];
            tasks_lean: "tasks" "lean" "ws",
            threads_lean: "threads" "lean" "ws",
            tasks_tungstenite: "tasks" "tungstenite" "ws",
            threads_tungstenite: "threads" "tungstenite" "ws",
            tasks_lean_wss: "tasks" "lean" "wss",
            threads_lean_wss: "threads" "lean" "wss",
            tasks_tungstenite_wss: "tasks" "tungstenite" "wss",
            threads_tungstenite_wss: "threads" "tungstenite" "wss"
        );
    };
}
pub(crate) use every_stack;

/// Runs an async test body once per execution model with the lean engine, over ws:// and
/// wss://, as four named tests.
macro_rules! lean_stacks {
    ($($name:ident),* $(,)?) => {
        $crate::servers!(
            [$($name),*];
            tasks: "tasks" "lean" "ws",
            threads: "threads" "lean" "ws",
            tasks_wss: "tasks" "lean" "wss",
            threads_wss: "threads" "lean" "wss"
        );
    };
}
pub(crate) use lean_stacks;

/// Runs an async test body once per execution model and engine over wss://, as four named
/// tests.
macro_rules! every_server_over_tls {
    ($($name:ident),* $(,)?) => {
        $crate::servers!(
            [$($name),*];
            tasks_lean_wss: "tasks" "lean" "wss",
            threads_lean_wss: "threads" "lean" "wss",
            tasks_tungstenite_wss: "tasks" "tungstenite" "wss",
            threads_tungstenite_wss: "threads" "tungstenite" "wss"
        );
    };
}
pub(crate) use every_server_over_tls;

/// Runs an async test body once per execution model and engine, as four named tests.
macro_rules! every_server {
    ($($name:ident),* $(,)?) => {
        $crate::servers!(
            [$($name),*];
            tasks_lean: "tasks" "lean" "ws",
            threads_lean: "threads" "lean" "ws",
            tasks_tungstenite: "tasks" "tungstenite" "ws",
            threads_tungstenite: "threads" "tungstenite" "ws"
        );
    };
}
pub(crate) use every_server;

/// A module per `module: "mode" "engine" "scheme"`, holding a test per body.
macro_rules! servers {
    ($names:tt; $($module:ident: $mode:literal $engine:literal $scheme:literal),+) => {
        $(
            mod $module {
                $crate::tests_for!($names, $mode, $engine, $scheme);
            }
        )+
    };
}
pub(crate) use servers;

macro_rules! tests_for {
    ([$($name:ident),*], $mode:literal, $engine:literal, $scheme:literal) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name($crate::support::Kind { mode: $mode, engine: $engine, scheme: $scheme }).await
            }
        )*
    };
}
pub(crate) use tests_for;
