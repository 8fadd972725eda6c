//! Failpoints for the fault-injection tests, shared by the server and the agent.
//!
//! Built only with the `failpoints` feature, which only the end-to-end tests
//! turn on (`tests/Cargo.toml`); without it [`failpoint!`](crate::failpoint)
//! expands to nothing and the `fail` crate is not even compiled. With it, a
//! point is armed through the `FAILPOINTS` variable of the `fail` crate, for
//! example `FAILPOINTS='push.after_write=return(exit)'`, with these actions:
//!
//! - `return(error)`: the operation fails there with an error;
//! - `return(exit)`: the process ends on the spot (exit status 86), like a
//!   crash that leaves no chance to clean up;
//! - `panic`: the thread panics there.
//!
//! The points: `push.between_items`, `push.after_write` (the store wrote, before
//! the flush) and `push.after_flush` (durable, before the answer) in the server;
//! `agent.after_upload` (the server answered, before the outbox is updated) and
//! `agent.mid_pull` (the pull's answer is in, before it is kept) and
//! `agent.mid_photo_upload` (a chunk of a photo was sent, before the next) in
//! the agent.

/// The exit status of a `return(exit)` failpoint.
pub const EXIT_STATUS: i32 = 86;

#[doc(hidden)]
#[cfg(feature = "failpoints")]
pub use fail as __fail;

/// Arms the points named in `FAILPOINTS` for the life of the returned guard;
/// call it first thing in `main`.
#[cfg(feature = "failpoints")]
pub fn setup() -> Option<fail::FailScenario<'static>> {
    let scenario = fail::FailScenario::setup();
    if let Ok(armed) = std::env::var("FAILPOINTS") {
        eprintln!("failpoints armed: {armed}");
    }
    Some(scenario)
}

/// Without the `failpoints` feature there is nothing to arm.
#[cfg(not(feature = "failpoints"))]
pub fn setup() -> Option<()> {
    None
}

#[doc(hidden)]
pub fn exit_if_asked(arg: Option<&str>) {
    if arg == Some("exit") {
        std::process::exit(EXIT_STATUS);
    }
}

/// `failpoint!("name", error)`: where the point is armed, ends the process
/// (`return(exit)`) or returns `Err(error)` from the enclosing function
/// (`return(error)`).
#[cfg(feature = "failpoints")]
#[macro_export]
macro_rules! failpoint {
    ($name:literal, $error:expr) => {
        $crate::failpoints::__fail::fail_point!($name, |arg: Option<String>| {
            $crate::failpoints::exit_if_asked(arg.as_deref());
            Err($error)
        })
    };
}

/// `failpoint!("name", error)`: nothing, in a build without failpoints.
#[cfg(not(feature = "failpoints"))]
#[macro_export]
macro_rules! failpoint {
    ($name:literal, $error:expr) => {};
}
