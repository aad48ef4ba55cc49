//! Integration tests: one binary, a module per area. Every test starts the real
//! `wsscale serve` on 127.0.0.1:0 and talks to it with real clients, in both modes.

// A test binary has no public API; its `pub` items are for sibling modules.
#![allow(unreachable_pub)]

mod browser;
mod compare;
mod conformance;
mod deploy;
mod faults;
mod hostile;
mod live;
mod load;
mod memory;
mod metrics;
mod push;
mod reconnect;
mod segments;
mod server;
mod stack;
mod support;

/// Runs an async test body once per execution model (lean engine), as two named tests;
/// the body takes a [`support::Kind`].
macro_rules! both_modes {
    ($($name:ident),* $(,)?) => {
        $crate::servers!([$($name),*]; tasks: "tasks" "lean", threads: "threads" "lean");
    };
}
pub(crate) use both_modes;

/// Runs an async test body once per execution model and engine, as four named tests.
macro_rules! every_server {
    ($($name:ident),* $(,)?) => {
        $crate::servers!(
            [$($name),*];
            tasks_lean: "tasks" "lean",
            threads_lean: "threads" "lean",
            tasks_tungstenite: "tasks" "tungstenite",
            threads_tungstenite: "threads" "tungstenite"
        );
    };
}
pub(crate) use every_server;

/// A module per `module: "mode" "engine"`, holding a test per body.
macro_rules! servers {
    ($names:tt; $($module:ident: $mode:literal $engine:literal),+) => {
        $(
            mod $module {
                $crate::tests_for!($names, $mode, $engine);
            }
        )+
    };
}
pub(crate) use servers;

macro_rules! tests_for {
    ([$($name:ident),*], $mode:literal, $engine:literal) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name($crate::support::Kind { mode: $mode, engine: $engine }).await
            }
        )*
    };
}
pub(crate) use tests_for;
