//! The disk's floor for a durable write, measured the way the journal
//! writes: 4 KiB `pwrite` + `fdatasync` at rising offsets of a
//! preallocated file, once over blocks already written (the floor a
//! recycled segment would give) and once into `fallocate`d, never-written
//! blocks (what a fresh segment costs today: the filesystem commits the
//! extent conversion with each sync).

use anyhow::{Context, Result};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

/// Bytes of one write.
const WRITE_BYTES: usize = 4096;

/// Median latencies of one durable 4 KiB write, in µs.
#[derive(Debug, Clone, Copy)]
pub struct SyncFloor {
    /// Over blocks already written and synced.
    pub overwrite_p50_us: f64,
    /// Into preallocated blocks never written.
    pub fresh_p50_us: f64,
}

/// Measures [`SyncFloor`] with `writes` writes of each kind, in a
/// temporary file under `dir` (removed afterwards).
///
/// # Errors
/// The file cannot be created, preallocated, written or synced.
pub fn measure(dir: &Path, writes: usize) -> Result<SyncFloor> {
    let tmp = tempfile::Builder::new()
        .prefix("hutong-bench-floor-")
        .tempdir_in(dir)
        .with_context(|| format!("a temp dir in {}", dir.display()))?;
    let overwrite_p50_us = p50_us(&tmp.path().join("overwrite"), writes, true)?;
    let fresh_p50_us = p50_us(&tmp.path().join("fresh"), writes, false)?;
    Ok(SyncFloor {
        overwrite_p50_us,
        fresh_p50_us,
    })
}

fn p50_us(path: &Path, writes: usize, written_before: bool) -> Result<f64> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    let len = (writes * WRITE_BYTES) as i64;
    use std::os::fd::AsRawFd;
    nix::fcntl::posix_fallocate(file.as_raw_fd(), 0, len).context("fallocate")?;
    if written_before {
        file.write_all_at(&vec![0u8; writes * WRITE_BYTES], 0)
            .context("pre-write")?;
        file.sync_all().context("sync")?;
    }
    let block = [0x5au8; WRITE_BYTES];
    let mut samples = Vec::with_capacity(writes);
    for i in 0..writes {
        let start = Instant::now();
        file.write_all_at(&block, (i * WRITE_BYTES) as u64)
            .context("write")?;
        file.sync_data().context("fdatasync")?;
        samples.push(start.elapsed().as_secs_f64() * 1e6);
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples.get(samples.len() / 2).copied().unwrap_or(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_floors_are_measured_and_the_file_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let f = measure(dir.path(), 16).unwrap();
        assert!(f.overwrite_p50_us > 0.0 && f.fresh_p50_us > 0.0, "{f:?}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
