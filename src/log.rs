//! Broker logging: one line per event on stderr.
//!
//! `eprintln!` panics when stderr cannot be written (a log file on a full
//! disk, a closed pipe); a broker must keep serving then, so every broker
//! line goes through [`log!`](crate::log!), which drops the line instead.

/// Writes one line, prefixed `hutong: `, to stderr; a failed write is
/// ignored.
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), "hutong: {}", format_args!($($arg)*));
    }};
}
