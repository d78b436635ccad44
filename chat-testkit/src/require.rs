//! Tests that need something from outside the workspace (a Docker engine, Chromium): on a
//! machine without it they are skipped, saying so and why; where CI provides it, a
//! variable (`CHAT_REQUIRE_DOCKER=1`, `CHAT_REQUIRE_BROWSER=1`) turns the skip into a
//! failure, so CI can never skip them silently.

use std::io::Write;

/// The variable that makes Docker engine tests mandatory.
pub const REQUIRE_DOCKER: &str = "CHAT_REQUIRE_DOCKER";
/// The variable that makes headless-browser tests mandatory.
pub const REQUIRE_BROWSER: &str = "CHAT_REQUIRE_BROWSER";

/// Whether the variable `var` is set to a true value (`1`, `true`, `yes`).
pub fn required(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| matches!(v.trim(), "1" | "true" | "yes"))
}

/// Decides whether test `test`, which needs `what`, runs: `Ok(t)` from `probe` runs it
/// with `t`; an `Err(reason)` skips it with a line on stderr (past the test harness's
/// capture, so `cargo test` shows it), or panics with the reason when `var` is set.
pub fn available_or_skip<T>(
    test: &str,
    what: &str,
    var: &str,
    probe: Result<T, String>,
) -> Option<T> {
    match probe {
        Ok(t) => Some(t),
        Err(reason) if required(var) => {
            panic!("{test} needs {what}, and {var} is set, so it may not be skipped: {reason}")
        }
        Err(reason) => {
            // Written to the process's stderr directly: eprintln! would be captured and
            // shown only if the test failed.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test}: needs {what}: {reason} (set {var}=1 to make this a failure)"
            );
            None
        }
    }
}
