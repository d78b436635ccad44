//! The cores' own log lines, captured into a run's trace with the virtual time.
//!
//! [`install`] sets a `tracing` subscriber that writes into a per-thread buffer; the world
//! moves what each event logged into its trace, stamped with the event's virtual time.

use std::cell::RefCell;
use std::io::Write;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

thread_local! {
    static BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Writes into this thread's buffer.
pub struct BufWriter;

impl Write for BufWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        BUF.with(|b| b.borrow_mut().extend_from_slice(buf));
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Makes [`BufWriter`]s.
#[derive(Debug, Clone, Copy, Default)]
pub struct MakeBuf;

impl<'a> MakeWriter<'a> for MakeBuf {
    type Writer = BufWriter;

    fn make_writer(&'a self) -> BufWriter {
        BufWriter
    }
}

/// Captures the cores' logs at `filter` (an `EnvFilter` directive such as `info`); false if
/// a subscriber was already set.
pub fn install(filter: &str) -> bool {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_writer(MakeBuf)
        .without_time()
        .with_target(false)
        .with_ansi(false)
        .try_init()
        .is_ok()
}

/// The lines logged on this thread since the last call.
pub fn take() -> Vec<String> {
    BUF.with(|b| {
        let bytes = std::mem::take(&mut *b.borrow_mut());
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect()
    })
}
