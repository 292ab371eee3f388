//! Crash-recovery snapshots of the memory store (`--snapshot-path`, `--snapshot-interval`).
//!
//! Without them a restart (or a crash) resets every budget: an exhausted key admits its whole
//! limit again. With them, the live buckets are written every interval and at graceful stop,
//! off the request path, and read back at start, so a restart or a crash costs at most what was
//! admitted within one interval.
//!
//! The file: a magic line, a format version, the body (postcard: the key secret that names the
//! buckets, the time, the buckets, the reservations held), and a SHA-256 of all that. It is written to a temporary file
//! beside it, synced, then renamed over it, so a reader sees the old snapshot or the new one,
//! never half of one. It holds the secret that keeps bucket names unguessable, so it is created
//! readable by its owner only. A missing, corrupt or foreign file is logged and ignored. Only
//! buckets whose limit is unchanged are restored (a limit sent in a request always is: its
//! key names its quota), and the reservations held on them (`tollgate.reserve`), so a settlement
//! after the restart still gives back what its request did not use.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::clock::Nanos;
use crate::decision::Limiter;
use crate::store::memory::Image;
use crate::store::reservation::Reservation;
use crate::store::{MemoryStore, Parts};

/// The first bytes of every snapshot.
const MAGIC: &[u8] = b"tollgate memory snapshot\n";

/// The format this build writes (and reads, with [`VERSION_WITHOUT_RESERVATIONS`]).
const VERSION: u32 = 3;

/// The previous format, read still: no reservations.
const VERSION_WITHOUT_RESERVATIONS: u32 = 2;

/// The most a snapshot may hold: past it, sliding logs are left out (they cost a timestamp
/// per hit) and a warning says so.
pub const MAX_BYTES: usize = 256 << 20;

/// Where and how often.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotOptions {
    /// The snapshot file.
    pub path: PathBuf,
    /// Time between two writes.
    pub interval: Duration,
}

/// What a snapshot holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Body {
    /// The secret hash key the buckets are named with.
    pub secret: [u64; 2],
    /// When it was written (the limiter's clock).
    pub saved_at: Nanos,
    /// The buckets.
    pub images: Vec<Image>,
    /// The reservations held, by id.
    pub reservations: Vec<(u128, Reservation)>,
}

/// A body of format [`VERSION_WITHOUT_RESERVATIONS`].
#[derive(serde::Serialize, serde::Deserialize)]
struct BodyWithoutReservations {
    secret: [u64; 2],
    saved_at: Nanos,
    images: Vec<Image>,
}

impl From<BodyWithoutReservations> for Body {
    fn from(old: BodyWithoutReservations) -> Self {
        Self {
            secret: old.secret,
            saved_at: old.saved_at,
            images: old.images,
            reservations: Vec::new(),
        }
    }
}

/// Why a snapshot was not read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// It could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// It is not a tollgate snapshot, or not of a format version this build reads.
    #[error(
        "{path} is not a tollgate snapshot of format {VERSION_WITHOUT_RESERVATIONS} or {VERSION}"
    )]
    Foreign {
        /// The file.
        path: PathBuf,
    },
    /// Its checksum or its body is wrong.
    #[error("{path} is corrupt: {why}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// Reads the snapshot at `path`: `Ok(None)` when there is none.
pub fn read(path: &Path) -> Result<Option<Body>, SnapshotError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(SnapshotError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    let foreign = || SnapshotError::Foreign {
        path: path.to_owned(),
    };
    let corrupt = |why: String| SnapshotError::Corrupt {
        path: path.to_owned(),
        why,
    };
    let rest = bytes.strip_prefix(MAGIC).ok_or_else(foreign)?;
    let (version, rest) = rest.split_first_chunk::<4>().ok_or_else(foreign)?;
    let version = u32::from_le_bytes(*version);
    if version != VERSION && version != VERSION_WITHOUT_RESERVATIONS {
        return Err(foreign());
    }
    let (body, checksum) = rest
        .split_last_chunk::<32>()
        .ok_or_else(|| corrupt("too short".to_owned()))?;
    let digest: [u8; 32] = Sha256::digest(&bytes[..bytes.len() - 32]).into();
    if &digest != checksum {
        return Err(corrupt("checksum mismatch".to_owned()));
    }
    let body = if version == VERSION {
        postcard::from_bytes(body)
    } else {
        postcard::from_bytes::<BodyWithoutReservations>(body).map(Body::from)
    };
    body.map(Some).map_err(|e| corrupt(e.to_string()))
}

/// Writes `body` to `path` atomically ([`crate::atomic_file::replace`]), readable by its owner
/// only. Returns the bytes written.
pub fn write(path: &Path, body: &Body) -> io::Result<usize> {
    let encoded = postcard::to_stdvec(body).map_err(io::Error::other)?;
    let mut bytes = Vec::with_capacity(MAGIC.len() + 4 + encoded.len() + 32);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&VERSION.to_le_bytes());
    bytes.extend_from_slice(&encoded);
    let digest = Sha256::digest(&bytes);
    bytes.extend_from_slice(&digest);
    crate::atomic_file::replace(path, &bytes)?;
    Ok(bytes.len())
}

/// Snapshots of one limiter's memory store.
#[derive(Debug, Clone)]
pub struct Snapshots {
    options: SnapshotOptions,
}

impl Snapshots {
    /// Snapshots as `options` say.
    pub fn new(options: SnapshotOptions) -> Self {
        Self { options }
    }

    /// The snapshot to start from, if there is a usable one (otherwise logged and ignored).
    pub fn load(&self) -> Option<Body> {
        match read(&self.options.path) {
            Ok(Some(body)) => Some(body),
            Ok(None) => {
                tracing::info!(path = %self.options.path.display(), "no snapshot yet: starting with full buckets");
                None
            }
            Err(error) => {
                tracing::warn!(%error, "snapshot ignored: starting with full buckets");
                None
            }
        }
    }

    /// Restores `body`'s buckets whose limit is unchanged into `limiter`'s memory store.
    pub fn restore(&self, body: Body, limiter: &Limiter) -> usize {
        let quotas = limiter.config().quotas_by_tag();
        let saved = body.images.len();
        let (restored, reservations) = with_memory(limiter, |memory| {
            let restored = memory.import(body.images, &quotas);
            (restored, memory.import_reservations(body.reservations))
        });
        tracing::info!(
            path = %self.options.path.display(),
            restored,
            skipped = saved - restored,
            reservations,
            "restored buckets and reservations from the snapshot (limits changed since are not restored)"
        );
        restored
    }

    /// Writes `limiter`'s buckets now (blocking: scans the store and writes the file).
    pub fn write_now(&self, limiter: &Limiter) -> io::Result<usize> {
        let quotas = limiter.config().quotas_by_tag();
        let (mut images, reservations) = with_memory(limiter, |memory| {
            (memory.export(&quotas), memory.export_reservations())
        });
        let dropped = bound(&mut images);
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "snapshot past {MAX_BYTES} bytes: sliding logs left out"
            );
        }
        let body = Body {
            secret: limiter.keys().secret(),
            saved_at: limiter.clock().now(),
            images,
            reservations,
        };
        write(&self.options.path, &body)
    }

    /// Writes a snapshot every interval until `stop`, then one last time.
    pub async fn run(self, limiter: Arc<Limiter>, stop: impl std::future::Future<Output = ()>) {
        let mut ticks = tokio::time::interval(self.options.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => return,
                _ = ticks.tick() => self.write_in_background(&limiter).await,
            }
        }
    }

    /// One write on a blocking thread; a failure is logged, never fatal.
    pub async fn write_in_background(&self, limiter: &Arc<Limiter>) {
        let (snapshots, limiter) = (self.clone(), limiter.clone());
        let written = tokio::task::spawn_blocking(move || snapshots.write_now(&limiter)).await;
        match written {
            Ok(Ok(bytes)) => tracing::debug!(bytes, "snapshot written"),
            Ok(Err(error)) => tracing::warn!(
                %error,
                path = %self.options.path.display(),
                "snapshot not written"
            ),
            Err(error) => tracing::warn!(%error, "snapshot task failed"),
        }
    }
}

/// Runs `f` on the limiter's memory store (every store stack used with snapshots has one).
fn with_memory<T: Default>(limiter: &Limiter, f: impl FnOnce(&MemoryStore) -> T) -> T {
    let mut parts = Parts::default();
    limiter.store().parts(&mut parts);
    parts.memory.map(f).unwrap_or_default()
}

/// Leaves sliding logs out, largest first, until the images fit in [`MAX_BYTES`] (about 50
/// bytes per bucket and 8 per logged hit). Returns how many were left out.
fn bound(images: &mut Vec<Image>) -> usize {
    use crate::store::memory::Saved;
    let size = |image: &Image| match &image.saved {
        Saved::Word { .. } => 50,
        Saved::Log { hits, .. } => 50 + 8 * hits.len(),
    };
    let mut total: usize = images.iter().map(size).sum();
    if total <= MAX_BYTES {
        return 0;
    }
    images.sort_by_key(|image| std::cmp::Reverse(size(image)));
    let mut dropped = 0;
    for image in images.iter() {
        if total <= MAX_BYTES || !matches!(image.saved, Saved::Log { .. }) {
            break;
        }
        total -= size(image);
        dropped += 1;
    }
    images.drain(..dropped);
    dropped
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::Saved;

    fn body() -> Body {
        Body {
            secret: [1, 2],
            saved_at: 42,
            images: vec![Image {
                key: 7,
                rule_tag: 3,
                quota: None,
                counted: true,
                saved: Saved::Log {
                    unit_ms: 1000,
                    hits: vec![5, 6],
                },
            }],
            reservations: vec![(
                9,
                Reservation {
                    key: crate::store::key::BucketKey(7),
                    units: 500,
                    taken_ms: 3,
                    expires: 60,
                },
            )],
        }
    }

    #[test]
    fn a_snapshot_of_the_previous_format_reads_without_reservations() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let old = body();
        let encoded = postcard::to_stdvec(&BodyWithoutReservations {
            secret: old.secret,
            saved_at: old.saved_at,
            images: old.images.clone(),
        })
        .unwrap();
        let mut bytes = MAGIC.to_vec();
        bytes.extend(VERSION_WITHOUT_RESERVATIONS.to_le_bytes());
        bytes.extend(encoded);
        let digest = Sha256::digest(&bytes);
        bytes.extend(digest);
        fs::write(&path, bytes).unwrap();
        let read = read(&path).unwrap().unwrap();
        assert_eq!((read.images, read.reservations), (old.images, Vec::new()));
    }

    #[test]
    fn a_snapshot_reads_back_what_was_written_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        assert!(matches!(read(&path), Ok(None)), "none yet");
        write(&path, &body()).unwrap();
        assert_eq!(read(&path).unwrap(), Some(body()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "it holds the key secret");
        }
        let mut bytes = fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(read(&path), Err(SnapshotError::Corrupt { .. })));
        fs::write(&path, b"something else").unwrap();
        assert!(matches!(read(&path), Err(SnapshotError::Foreign { .. })));
        let mut other_version = MAGIC.to_vec();
        other_version.extend((VERSION + 1).to_le_bytes());
        fs::write(&path, other_version).unwrap();
        assert!(matches!(read(&path), Err(SnapshotError::Foreign { .. })));
    }

    #[test]
    fn huge_logs_are_left_out_first() {
        let word = Image {
            saved: Saved::Word {
                state: 1,
                algorithm: crate::quota::Algorithm::TokenBucket,
                scale: 1,
            },
            ..body().images[0].clone()
        };
        let huge = Image {
            saved: Saved::Log {
                unit_ms: 1,
                hits: vec![0; MAX_BYTES / 8],
            },
            ..word.clone()
        };
        let mut images = vec![word.clone(), huge];
        assert_eq!(bound(&mut images), 1);
        assert_eq!(images, vec![word]);
    }
}
