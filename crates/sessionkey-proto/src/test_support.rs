//! Helpers for the crate's unit tests.

use std::io::Write;
use std::path::PathBuf;

/// The repository's copy of the public test vectors.
pub(crate) fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../vectors")
}

/// Print a `name: N passed, M failed` line past the test harness's output capture, so that it
/// shows in every test run.
pub(crate) fn report(name: &str, passed: usize, failed: usize) {
    let _ = writeln!(
        std::io::stderr().lock(),
        "{name}: {passed} passed, {failed} failed"
    );
}
