//! A small tmpfs for disk-full tests, and fillers that use up its room.
//!
//! Mounting needs root (as in CI); callers print a `SKIPPED` line and pass
//! where `mount` is not permitted.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A tmpfs mounted for the test; unmounted on drop, also when the test
/// fails (declare it after the directory it lives in and before the
/// broker using it, so that the broker is killed first).
pub struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `bytes` on `path`.
    ///
    /// # Errors
    /// What `mount` printed, when it failed (typically: not root).
    pub fn mount(path: &Path, bytes: u64) -> Result<Tmpfs, String> {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount exited with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // A broker that was just killed may hold its files a moment longer.
        for _ in 0..50 {
            let ok = Command::new("umount")
                .arg(&self.path)
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Writes `bytes` bytes to `path` and syncs them.
pub fn fill(path: &Path, bytes: u64) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).expect("create filler");
    let chunk = vec![0x5au8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n]).expect("write filler");
        left -= n as u64;
    }
    f.sync_all().expect("sync filler");
}

/// Writes `path` until the filesystem has not a byte left.
pub fn fill_to_the_last_byte(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).expect("create top-up filler");
    let chunk = [0xa5u8; 4096];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc_enospc()) => break,
            Err(e) => panic!("writing the top-up filler: {e}"),
        }
    }
}

fn libc_enospc() -> i32 {
    nix::errno::Errno::ENOSPC as i32
}
