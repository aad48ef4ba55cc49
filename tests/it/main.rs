//! Integration tests: one binary, a module per area. Every test starts the real
//! `wsscale serve` on 127.0.0.1:0 and talks to it with real clients, in both modes.

// A test binary has no public API; its `pub` items are for sibling modules.
#![allow(unreachable_pub)]

mod compare;
mod conformance;
mod faults;
mod hostile;
mod load;
mod metrics;
mod reconnect;
mod segments;
mod server;
mod stack;
mod support;

/// Runs an async test body once per execution model, as two named tests.
macro_rules! both_modes {
    ($($name:ident),* $(,)?) => {
        mod tasks {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name("tasks").await
                }
            )*
        }
        mod threads {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name("threads").await
                }
            )*
        }
    };
}
pub(crate) use both_modes;
