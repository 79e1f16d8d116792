//! Every limit and default of the broker, validated in one place.
//!
//! Names carry their unit last (`_bytes`, `_ms`, `_max`). The defaults are
//! checked against each other at compile time; values from a config file or
//! the command line are checked by [`Config::validate`].
//!
//! This is the broker's configuration (broker feature). The bounds the wire
//! protocol fixes, which clients need too, live in [`crate::wire::limits`]
//! and are re-exported here so that the broker's limits read in one place.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use thiserror::Error;

pub use crate::wire::limits::{
    FETCH_WAIT_MS_MAX, KIB, MIB, PRODUCE_TIMEOUT_MS_MAX, PRODUCE_TIMEOUT_MS_MIN,
    SMALL_REQUEST_BYTES_MAX,
};

/// Default listen address.
pub const LISTEN_DEFAULT: &str = "127.0.0.1:7070";
/// Default journal segment size (preallocated).
pub const SEGMENT_BYTES_DEFAULT: usize = 128 * MIB;
/// Default `retention_ms` of a standalone broker: 7 days, as Kafka.
pub const RETENTION_MS_DEFAULT: u64 = 7 * 24 * 3600 * 1000;
/// Default `retention_check_ms`.
pub const RETENTION_CHECK_MS_DEFAULT: u64 = 1000;
/// Accepted `retention_check_ms`: from 10 ms to an hour.
pub const RETENTION_CHECK_MS_RANGE: std::ops::RangeInclusive<u64> = 10..=3_600_000;
/// Default maximum frame size, length prefix included.
pub const FRAME_BYTES_MAX_DEFAULT: usize = 16 * MIB;
/// Default maximum record batch size.
pub const BATCH_BYTES_MAX_DEFAULT: usize = 16 * MIB - 1024;
/// Default capacity of the reactor → writer request ring.
pub const REQUEST_RING_BYTES_DEFAULT: usize = 64 * MIB;
/// Default capacity of the reactor → reader request ring.
pub const READ_REQUEST_RING_BYTES_DEFAULT: usize = 4 * MIB;
/// Default capacity of the responder → reactor completion ring.
pub const RESPONSE_RING_BYTES_DEFAULT: usize = 8 * MIB;
/// Default size of the writer's cache of batches not yet handed to the
/// kernel (one pwrite per writer round).
pub const WRITE_CACHE_BYTES_DEFAULT: usize = 32 * MIB;
/// Default largest fetch response (batches), whatever the client asks.
pub const FETCH_BYTES_MAX_DEFAULT: usize = 8 * MIB;
/// Default capacity of the reader → reactor completion ring.
pub const FETCH_RING_BYTES_DEFAULT: usize = 4 * FETCH_BYTES_MAX_DEFAULT;
/// Default bound on produce requests waiting for their QoS position.
pub const PENDING_MAX_DEFAULT: usize = 256 * 1024;
/// Default bound on requests in flight on one connection.
pub const IN_FLIGHT_PER_CONNECTION_MAX_DEFAULT: usize = 4096;
/// Default bound on queued response bytes per connection before the broker
/// stops reading that connection's requests.
pub const CONNECTION_WRITE_BYTES_MAX_DEFAULT: usize = 16 * MIB;
/// Default maximum number of client connections.
pub const CONNECTIONS_MAX_DEFAULT: usize = 10_000;
/// Default maximum number of topics.
pub const TOPICS_MAX_DEFAULT: usize = 10_000;
/// Default maximum partitions of one topic.
pub const PARTITIONS_PER_TOPIC_MAX_DEFAULT: u32 = 4096;
/// Default maximum partitions across all topics.
pub const PARTITIONS_MAX_DEFAULT: usize = 100_000;
/// Default interval between journal checkpoints.
pub const CHECKPOINT_INTERVAL_MS_DEFAULT: u64 = 5_000;
/// Default least time between two fdatasyncs that no request or fetch
/// waits for (docs/operations.md, Flushing).
pub const FLUSH_PACE_US_DEFAULT: u64 = 1_000;
/// Largest `flush_pace_us` accepted: 100 ms.
pub const FLUSH_PACE_US_MAX: u64 = 100_000;
/// Default journal bytes made durable between two checkpoints, at most:
/// what recovery verifies batch by batch after a crash.
pub const CHECKPOINT_BYTES_DEFAULT: u64 = 128 * MIB as u64;
/// Fewest bytes between checkpoints one may ask for.
pub const CHECKPOINT_BYTES_MIN: u64 = MIB as u64;
/// Default of `consensus_log_entries_max` (about 24 MB of memory).
pub const CONSENSUS_LOG_ENTRIES_MAX_DEFAULT: usize = 1_000_000;
/// Least `consensus_log_entries_max`.
pub const CONSENSUS_LOG_ENTRIES_MAX_MIN: usize = 16;
/// Default largest record key.
pub const RECORD_KEY_BYTES_MAX_DEFAULT: usize = 64 * KIB;
/// Default largest record value.
pub const RECORD_VALUE_BYTES_MAX_DEFAULT: usize = 8 * MIB;
// The producer states' bounds are the journal's (journal::producers,
// where their memory is accounted for); they are settings of the broker.
pub use crate::journal::producers::{
    PRODUCER_IDLE_EXPIRY_MS_DEFAULT, PRODUCER_STATES_MAX_DEFAULT, PRODUCER_STATES_MAX_LIMIT,
    PRODUCER_WINDOW_DEFAULT, PRODUCER_WINDOW_MAX,
};
/// Default time a connection may sit on half a frame before it is closed.
pub const PARTIAL_FRAME_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// Default time a connection with nothing in flight may stay silent.
pub const IDLE_CONNECTION_TIMEOUT_MS_DEFAULT: u64 = 600_000;
/// Default partitions of an auto-created topic.
pub const AUTO_CREATE_PARTITIONS_DEFAULT: u32 = 1;
/// Default consensus tick: elections time out after 10-20 ticks
/// (250-500 ms), the leader heartbeats every 2 ticks.
pub const TICK_MS_DEFAULT: u64 = 25;
/// Bounds of `tick_ms`.
pub const TICK_MS_MIN: u64 = 1;
/// Upper bound of `tick_ms`.
pub const TICK_MS_MAX: u64 = 10_000;

const _: () = assert!(
    BATCH_BYTES_MAX_DEFAULT + SMALL_REQUEST_BYTES_MAX <= FRAME_BYTES_MAX_DEFAULT + 64 * KIB
);
const _: () = assert!(SEGMENT_BYTES_DEFAULT >= BATCH_BYTES_MAX_DEFAULT);
const _: () = assert!(WRITE_CACHE_BYTES_DEFAULT >= BATCH_BYTES_MAX_DEFAULT);
const _: () = assert!(REQUEST_RING_BYTES_DEFAULT >= 2 * FRAME_BYTES_MAX_DEFAULT);
const _: () = assert!(FETCH_RING_BYTES_DEFAULT >= 2 * FETCH_BYTES_MAX_DEFAULT);
const _: () = assert!(READ_REQUEST_RING_BYTES_DEFAULT >= 2 * SMALL_REQUEST_BYTES_MAX);

/// The broker's configuration. Every field has a default; a TOML config
/// file may set any of them by name.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Directory holding the journal segments and checkpoint.
    pub data_dir: PathBuf,
    /// Create unknown topics on first produce instead of answering UnknownTopic.
    pub auto_create_topics: bool,
    /// Partitions of an auto-created topic.
    pub auto_create_partitions: u32,
    /// Size of each preallocated journal segment file.
    pub segment_bytes: usize,
    /// Writer cache of appended batches not yet written to the file.
    pub write_cache_bytes: usize,
    /// Largest request frame accepted (length prefix included).
    pub frame_bytes_max: usize,
    /// Largest record batch accepted.
    pub batch_bytes_max: usize,
    /// Capacity of the reactor → writer ring.
    pub request_ring_bytes: usize,
    /// Capacity of the reactor → reader ring.
    pub read_request_ring_bytes: usize,
    /// Capacity of the responder → reactor ring.
    pub response_ring_bytes: usize,
    /// Capacity of the reader → reactor ring.
    pub fetch_ring_bytes: usize,
    /// Largest fetch answer in batch bytes.
    pub fetch_bytes_max: usize,
    /// Produce requests waiting for their QoS position, broker-wide.
    pub pending_max: usize,
    /// Requests in flight on one connection before the broker stops reading it.
    pub in_flight_per_connection_max: usize,
    /// Queued response bytes on one connection before the broker stops reading it.
    pub connection_write_bytes_max: usize,
    /// Client connections served at once.
    pub connections_max: usize,
    /// Topics the broker holds.
    pub topics_max: usize,
    /// Partitions one topic may have.
    pub partitions_per_topic_max: u32,
    /// Partitions across all topics.
    pub partitions_max: usize,
    /// Interval between journal checkpoints.
    pub checkpoint_interval_ms: u64,
    /// Least time, in µs, between two fdatasyncs that nobody waits for: no
    /// request at QoS `flushed` or `all`, no fetch parked at the end of a
    /// partition. Such syncs only move F for their own sake, and on a small
    /// machine one per batch takes the CPU the producers need. 0: sync
    /// every round as soon as W moves. Standalone only (a group member
    /// syncs every round: C waits for it).
    pub flush_pace_us: u64,
    /// A checkpoint is also written whenever this many journal bytes
    /// became durable since the last one, so that a crash under load leaves
    /// recovery a bounded tail to verify.
    pub checkpoint_bytes: u64,
    /// Journal bytes kept: the oldest sealed segments are deleted while
    /// the rest still holds at least this much. 0: no size limit.
    pub retention_bytes: u64,
    /// A sealed segment whose newest batch is older than this is deleted
    /// (oldest first). `None` in a file means the default (7 days, for a
    /// standalone broker; a replication group keeps everything unless
    /// told otherwise). 0: no time limit.
    pub retention_ms: Option<u64>,
    /// How often the writer looks for segments to delete (it also looks
    /// each time it seals one).
    pub retention_check_ms: u64,
    /// Largest record key accepted.
    pub record_key_bytes_max: usize,
    /// Largest record value accepted.
    pub record_value_bytes_max: usize,
    /// Batches remembered per producer and partition to recognise retries.
    pub producer_window: usize,
    /// A producer's state on a partition is dropped this long after its
    /// last batch there.
    pub producer_idle_expiry_ms: u64,
    /// Most (producer, partition) states kept; the least recently used goes.
    pub producer_states_max: usize,
    /// A connection holding half a frame with no new bytes for this long is closed.
    pub partial_frame_timeout_ms: u64,
    /// A connection with nothing in flight and no traffic for this long is closed.
    pub idle_connection_timeout_ms: u64,
    /// This broker's id in its replication group (0: standalone, no peers).
    pub node_id: u64,
    /// Every member of the replication group, this broker included: the
    /// address this broker uses to reach each of them. Empty: standalone.
    pub peers: Vec<Peer>,
    /// The consensus clock: elections, heartbeats and retransmissions are
    /// counted in ticks of this length.
    pub tick_ms: u64,
    /// A group member's consensus log (one entry, 24 bytes of memory, per
    /// batch) is compacted to the latest committed snapshot once every
    /// peer holds it, or, whoever does not, once it holds more entries than
    /// this: a peer that then needs what was compacted is sent the snapshot.
    pub consensus_log_entries_max: usize,
    /// Cut the journal at damage recovery may not cut on its own, logging
    /// what is dropped (`hutong broker --repair`; never read from a file:
    /// it is a decision for one start, not a setting).
    #[serde(skip)]
    pub repair: bool,
    /// Read and check the whole journal at this start rather than start
    /// from the catalog snapshot (`hutong broker --verify-journal`;
    /// like `repair`, a decision for one start).
    #[serde(skip)]
    pub verify_journal: bool,
}

/// One member of a replication group.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    /// Its node id (1 or more).
    pub id: u64,
    /// Its address, `host:port`.
    pub addr: String,
}

/// Parses `1=ADDR1,2=ADDR2,...` (the `--peers` flag).
///
/// # Errors
/// [`ConfigError`] naming the malformed entry.
pub fn parse_peers(text: &str) -> Result<Vec<Peer>, ConfigError> {
    text.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|entry| {
            let (id, addr) = entry
                .split_once('=')
                .ok_or_else(|| ConfigError(format!("peer `{entry}` is not ID=HOST:PORT")))?;
            let id = id
                .trim()
                .parse()
                .map_err(|_| ConfigError(format!("peer `{entry}`: `{id}` is not a node id")))?;
            Ok(Peer {
                id,
                addr: addr.trim().to_string(),
            })
        })
        .collect()
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: LISTEN_DEFAULT
                .parse()
                .expect("default listen address parses"),
            data_dir: PathBuf::from("data"),
            auto_create_topics: false,
            auto_create_partitions: AUTO_CREATE_PARTITIONS_DEFAULT,
            segment_bytes: SEGMENT_BYTES_DEFAULT,
            write_cache_bytes: WRITE_CACHE_BYTES_DEFAULT,
            frame_bytes_max: FRAME_BYTES_MAX_DEFAULT,
            batch_bytes_max: BATCH_BYTES_MAX_DEFAULT,
            request_ring_bytes: REQUEST_RING_BYTES_DEFAULT,
            read_request_ring_bytes: READ_REQUEST_RING_BYTES_DEFAULT,
            response_ring_bytes: RESPONSE_RING_BYTES_DEFAULT,
            fetch_ring_bytes: FETCH_RING_BYTES_DEFAULT,
            fetch_bytes_max: FETCH_BYTES_MAX_DEFAULT,
            pending_max: PENDING_MAX_DEFAULT,
            in_flight_per_connection_max: IN_FLIGHT_PER_CONNECTION_MAX_DEFAULT,
            connection_write_bytes_max: CONNECTION_WRITE_BYTES_MAX_DEFAULT,
            connections_max: CONNECTIONS_MAX_DEFAULT,
            topics_max: TOPICS_MAX_DEFAULT,
            partitions_per_topic_max: PARTITIONS_PER_TOPIC_MAX_DEFAULT,
            partitions_max: PARTITIONS_MAX_DEFAULT,
            checkpoint_interval_ms: CHECKPOINT_INTERVAL_MS_DEFAULT,
            flush_pace_us: FLUSH_PACE_US_DEFAULT,
            checkpoint_bytes: CHECKPOINT_BYTES_DEFAULT,
            retention_bytes: 0,
            retention_ms: None,
            retention_check_ms: RETENTION_CHECK_MS_DEFAULT,
            record_key_bytes_max: RECORD_KEY_BYTES_MAX_DEFAULT,
            record_value_bytes_max: RECORD_VALUE_BYTES_MAX_DEFAULT,
            producer_window: PRODUCER_WINDOW_DEFAULT,
            producer_idle_expiry_ms: PRODUCER_IDLE_EXPIRY_MS_DEFAULT,
            producer_states_max: PRODUCER_STATES_MAX_DEFAULT,
            partial_frame_timeout_ms: PARTIAL_FRAME_TIMEOUT_MS_DEFAULT,
            idle_connection_timeout_ms: IDLE_CONNECTION_TIMEOUT_MS_DEFAULT,
            node_id: 0,
            peers: Vec::new(),
            tick_ms: TICK_MS_DEFAULT,
            consensus_log_entries_max: CONSENSUS_LOG_ENTRIES_MAX_DEFAULT,
            repair: false,
            verify_journal: false,
        }
    }
}

/// A configuration value is out of range or inconsistent with another.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

/// Room a ring needs besides one frame: its per-message envelope.
pub const RING_ENVELOPE_BYTES: usize = 16;

impl Config {
    /// The time limit retention applies, in ms: `retention_ms`, or its
    /// default (7 days standalone, none in a replication group); `None`
    /// when there is no limit.
    pub fn retention_ms_effective(&self) -> Option<u64> {
        let ms = self.retention_ms.unwrap_or(if self.peers.is_empty() {
            RETENTION_MS_DEFAULT
        } else {
            0
        });
        (ms > 0).then_some(ms)
    }

    /// Reads a TOML config file; fields it leaves out keep their defaults.
    ///
    /// # Errors
    /// [`ConfigError`] when the file cannot be read or parsed.
    pub fn from_file(path: &std::path::Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| ConfigError(format!("{}: {e}", path.display())))
    }

    /// Checks every value and their relations.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first offending setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |m: String| Err(ConfigError(m));
        let min_frame =
            crate::wire::frame::REQUEST_HEADER_LEN + crate::wire::batch::BATCH_HEADER_LEN + 64;
        if self.frame_bytes_max < min_frame || self.frame_bytes_max > 1 << 30 {
            return fail(format!("frame_bytes_max must be in {min_frame}..=1GiB"));
        }
        if self.batch_bytes_max < crate::wire::batch::BATCH_HEADER_LEN
            || self.batch_bytes_max > self.frame_bytes_max
        {
            return fail(
                "batch_bytes_max must be at least a batch header and at most frame_bytes_max"
                    .into(),
            );
        }
        if self.segment_bytes < self.batch_bytes_max || self.segment_bytes > 1 << 40 {
            return fail("segment_bytes must hold at least one batch_bytes_max batch".into());
        }
        if !RETENTION_CHECK_MS_RANGE.contains(&self.retention_check_ms) {
            return fail(format!(
                "retention_check_ms must be in {}..={}",
                RETENTION_CHECK_MS_RANGE.start(),
                RETENTION_CHECK_MS_RANGE.end()
            ));
        }
        if self.write_cache_bytes < self.batch_bytes_max || self.write_cache_bytes > 1 << 32 {
            return fail("write_cache_bytes must hold at least one batch_bytes_max batch".into());
        }
        if self.request_ring_bytes < self.frame_bytes_max + RING_ENVELOPE_BYTES {
            return fail("request_ring_bytes must hold at least one frame_bytes_max frame".into());
        }
        if self.read_request_ring_bytes < SMALL_REQUEST_BYTES_MAX + RING_ENVELOPE_BYTES {
            return fail(format!(
                "read_request_ring_bytes must be at least {}",
                SMALL_REQUEST_BYTES_MAX + RING_ENVELOPE_BYTES
            ));
        }
        if self.response_ring_bytes < 64 * KIB {
            return fail("response_ring_bytes must be at least 64 KiB".into());
        }
        if self.fetch_bytes_max < 1024
            || self.fetch_ring_bytes < self.fetch_bytes_max + self.batch_bytes_max + 64 * KIB
        {
            return fail(
                "fetch_ring_bytes must hold fetch_bytes_max plus one batch_bytes_max batch".into(),
            );
        }
        if self.pending_max == 0
            || self.in_flight_per_connection_max == 0
            || self.connections_max == 0
        {
            return fail(
                "pending_max, in_flight_per_connection_max and connections_max must be above 0"
                    .into(),
            );
        }
        if self.connection_write_bytes_max < 64 * KIB {
            return fail("connection_write_bytes_max must be at least 64 KiB".into());
        }
        if self.partitions_max > crate::journal::topic::PARTITIONS_MAX {
            return fail(format!(
                "partitions_max must be at most {} (the journal's own bound)",
                crate::journal::topic::PARTITIONS_MAX
            ));
        }
        if self.topics_max == 0 || self.partitions_per_topic_max == 0 || self.partitions_max == 0 {
            return fail(
                "topics_max, partitions_per_topic_max and partitions_max must be above 0".into(),
            );
        }
        if self.auto_create_partitions == 0
            || self.auto_create_partitions > self.partitions_per_topic_max
        {
            return fail("auto_create_partitions must be in 1..=partitions_per_topic_max".into());
        }
        if self.record_key_bytes_max == 0 || self.record_value_bytes_max == 0 {
            return fail("record_key_bytes_max and record_value_bytes_max must be above 0".into());
        }
        if !(1..=PRODUCER_WINDOW_MAX).contains(&self.producer_window) {
            return fail(format!(
                "producer_window must be in 1..={PRODUCER_WINDOW_MAX}"
            ));
        }
        if self.producer_idle_expiry_ms == 0 || self.producer_idle_expiry_ms > i64::MAX as u64 {
            return fail("producer_idle_expiry_ms must be above 0".into());
        }
        if !(1..=PRODUCER_STATES_MAX_LIMIT).contains(&self.producer_states_max) {
            return fail(format!(
                "producer_states_max must be in 1..={PRODUCER_STATES_MAX_LIMIT}"
            ));
        }
        if self.partial_frame_timeout_ms == 0 || self.idle_connection_timeout_ms == 0 {
            return fail(
                "partial_frame_timeout_ms and idle_connection_timeout_ms must be above 0".into(),
            );
        }
        if self.checkpoint_interval_ms == 0 {
            return fail("checkpoint_interval_ms must be above 0".into());
        }
        if self.flush_pace_us > FLUSH_PACE_US_MAX {
            return fail(format!(
                "flush_pace_us must be at most {FLUSH_PACE_US_MAX} (100 ms)"
            ));
        }
        if self.checkpoint_bytes < CHECKPOINT_BYTES_MIN {
            return fail(format!(
                "checkpoint_bytes must be at least {CHECKPOINT_BYTES_MIN} (1 MiB)"
            ));
        }
        if !(TICK_MS_MIN..=TICK_MS_MAX).contains(&self.tick_ms) {
            return fail(format!("tick_ms must be in {TICK_MS_MIN}..={TICK_MS_MAX}"));
        }
        if self.consensus_log_entries_max < CONSENSUS_LOG_ENTRIES_MAX_MIN {
            return fail(format!(
                "consensus_log_entries_max must be at least {CONSENSUS_LOG_ENTRIES_MAX_MIN}"
            ));
        }
        self.validate_peers()
    }

    /// The bounds of the producer states these settings give.
    pub fn producer_limits(&self) -> crate::journal::producers::ProducerLimits {
        crate::journal::producers::ProducerLimits {
            window: self.producer_window,
            idle_expiry_ms: self.producer_idle_expiry_ms,
            states_max: self.producer_states_max,
        }
    }

    /// True when this broker is a member of a replication group.
    pub fn is_clustered(&self) -> bool {
        !self.peers.is_empty()
    }

    fn validate_peers(&self) -> Result<(), ConfigError> {
        let fail = |m: String| Err(ConfigError(m));
        if self.peers.is_empty() {
            if self.node_id != 0 {
                return fail("node_id needs peers (the whole group, this node included)".into());
            }
            return Ok(());
        }
        if self.node_id == 0 {
            return fail(
                "peers need node_id (1 or more) to say which of them this broker is".into(),
            );
        }
        if self.peers.len() > crate::consensus::quorum::VOTERS_MAX {
            return fail(format!(
                "a group has at most {} members",
                crate::consensus::quorum::VOTERS_MAX
            ));
        }
        let mut ids: Vec<u64> = self.peers.iter().map(|p| p.id).collect();
        ids.sort_unstable();
        if ids.windows(2).any(|w| w[0] == w[1]) || ids.first() == Some(&0) {
            return fail("peer ids must be distinct and above 0".into());
        }
        if !ids.contains(&self.node_id) {
            return fail(format!(
                "peers must list this broker's own node_id {}",
                self.node_id
            ));
        }
        let host_port = |addr: &str| {
            addr.rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
        };
        if let Some(p) = self.peers.iter().find(|p| !host_port(&p.addr)) {
            return fail(format!(
                "peer {} address `{}` is not HOST:PORT",
                p.id, p.addr
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn inconsistent_values_are_refused() {
        let c = Config {
            segment_bytes: 1024,
            ..Config::default()
        };
        assert!(c.validate().is_err());
        let c = Config {
            request_ring_bytes: 1024,
            ..Config::default()
        };
        assert!(c.validate().is_err());
        let c = Config {
            partitions_max: crate::journal::topic::PARTITIONS_MAX + 1,
            ..Config::default()
        };
        assert!(c.validate().is_err());
        for c in [
            Config {
                producer_window: 0,
                ..Config::default()
            },
            Config {
                producer_window: PRODUCER_WINDOW_MAX + 1,
                ..Config::default()
            },
            Config {
                producer_idle_expiry_ms: 0,
                ..Config::default()
            },
            Config {
                producer_states_max: 0,
                ..Config::default()
            },
            Config {
                checkpoint_bytes: CHECKPOINT_BYTES_MIN - 1,
                ..Config::default()
            },
            Config {
                flush_pace_us: FLUSH_PACE_US_MAX + 1,
                ..Config::default()
            },
        ] {
            assert!(c.validate().is_err(), "{c:?}");
        }
        for pace in [0, FLUSH_PACE_US_MAX] {
            let c: Config = toml::from_str(&format!("flush_pace_us = {pace}\n")).unwrap();
            assert!(c.validate().is_ok() && c.flush_pace_us == pace);
        }
        let c: Config = toml::from_str(
            "producer_window = 128\nproducer_idle_expiry_ms = 60000\nproducer_states_max = 10\n",
        )
        .unwrap();
        assert!(c.validate().is_ok());
        assert_eq!(
            c.producer_limits(),
            crate::journal::producers::ProducerLimits {
                window: 128,
                idle_expiry_ms: 60_000,
                states_max: 10
            }
        );
    }

    #[test]
    fn peers_parse_and_must_name_this_node_once() {
        let peers = parse_peers("1=127.0.0.1:7001, 2=127.0.0.1:7002,3=host.example:7003").unwrap();
        assert_eq!(peers.len(), 3);
        assert_eq!(peers[2].id, 3);
        assert_eq!(peers[2].addr, "host.example:7003");
        assert!(parse_peers("1:127.0.0.1:7001").is_err());
        assert!(parse_peers("x=127.0.0.1:7001").is_err());
        let group = |node_id, peers: &str| Config {
            node_id,
            peers: parse_peers(peers).unwrap(),
            ..Config::default()
        };
        assert!(group(1, "1=a:1,2=b:2,3=c:3").validate().is_ok());
        assert!(
            group(4, "1=a:1,2=b:2,3=c:3").validate().is_err(),
            "not a member"
        );
        assert!(group(0, "1=a:1,2=b:2").validate().is_err(), "no node id");
        assert!(group(1, "1=a:1,1=b:2").validate().is_err(), "duplicate id");
        assert!(
            group(1, "1=a:1,2=nocolon").validate().is_err(),
            "bad address"
        );
        assert!(group(2, "").validate().is_err(), "node id without peers");
        assert!(group(0, "").validate().is_ok(), "standalone");
        let c: Config = toml::from_str(
            "node_id = 2\npeers = [{ id = 1, addr = \"a:1\" }, { id = 2, addr = \"b:2\" }]\n",
        )
        .unwrap();
        assert!(c.is_clustered() && c.validate().is_ok());
    }

    #[test]
    fn config_file_overrides_only_what_it_names() {
        let c: Config =
            toml::from_str("listen = \"127.0.0.1:9000\"\nsegment_bytes = 33554432\n").unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.segment_bytes, 32 * MIB);
        assert_eq!(c.frame_bytes_max, FRAME_BYTES_MAX_DEFAULT);
        assert!(toml::from_str::<Config>("bogus = 1").is_err());
    }
}
