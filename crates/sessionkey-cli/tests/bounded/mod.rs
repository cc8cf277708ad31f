//! Waits on child processes that end at a deadline: a regression fails its test with a
//! message saying what did not happen, instead of hanging the run.

#![allow(dead_code)]

use std::io::Read;
use std::process::{Child, ExitStatus, Output};
use std::thread;
use std::time::{Duration, Instant};

/// Wait for `child` to exit within `timeout`; on the deadline kill it and panic naming
/// `what`.
pub(crate) fn wait_within(child: &mut Child, timeout: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status,
            Ok(None) => {}
            Err(e) => panic!("{what}: cannot wait for the child: {e}"),
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: did not exit within {timeout:?} (killed)");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// [`Child::wait_with_output`] with a deadline: its standard output and error are read on
/// threads (so a full pipe cannot block the child), and the child is killed at the
/// deadline with a panic naming `what`.
pub(crate) fn output_within(mut child: Child, timeout: Duration, what: &str) -> Output {
    fn drain(r: Option<impl Read + Send + 'static>) -> thread::JoinHandle<Vec<u8>> {
        thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    }
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let status = wait_within(&mut child, timeout, what);
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// `cmd.output()` with a deadline (standard input empty, output captured).
pub(crate) fn run_within(cmd: &mut std::process::Command, timeout: Duration, what: &str) -> Output {
    use std::process::Stdio;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    output_within(child, timeout, what)
}

/// `cmd.status()` with a deadline (standard streams as `cmd` has them).
pub(crate) fn status_within(
    cmd: &mut std::process::Command,
    timeout: Duration,
    what: &str,
) -> ExitStatus {
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    wait_within(&mut child, timeout, what)
}

/// Join `handle` within `timeout`, or panic naming `what` (the thread is left behind).
pub(crate) fn join_within<T>(handle: thread::JoinHandle<T>, timeout: Duration, what: &str) -> T {
    let deadline = Instant::now() + timeout;
    while !handle.is_finished() {
        assert!(
            Instant::now() < deadline,
            "{what}: did not finish within {timeout:?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
    match handle.join() {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e),
    }
}
