//! The consumer: reads one partition from a position with long-polling
//! fetches.

use super::admin::list_offsets;
use super::connection::Connection;
use super::error::ClientError;
use crate::wire::api::{FetchRequest, FetchResponse, OffsetRangeBody};
use crate::wire::batch::{check_stored_batch, records, split_batches, BatchKind, BatchView};
use crate::wire::limits::FETCH_WAIT_MS_MAX;
use crate::wire::{ApiKey, ErrorCode};
use std::net::ToSocketAddrs;
use std::time::Duration;

/// Default soft cap on the batch bytes one fetch returns.
pub const FETCH_MAX_BYTES_DEFAULT: u32 = 1024 * 1024;
/// How much longer than the fetch's own wait the client waits for the
/// answer before giving up with [`ClientError::Timeout`].
pub const FETCH_ANSWER_GRACE: Duration = Duration::from_secs(30);

/// Where a consumer starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// The first offset still stored.
    Earliest,
    /// The end of the partition: only records produced from now on.
    Latest,
    /// A given offset.
    Offset(u64),
    /// The first record appended at or after this time (ms since the Unix
    /// epoch, by the broker's clock), or the end when there is none.
    Time(i64),
}

/// How a consumer fetches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumerConfig {
    /// Soft cap on the batch bytes of one fetch (the broker returns at
    /// least one whole batch).
    pub max_bytes: u32,
    /// When the position falls below the partition's log start (retention
    /// deleted those records before they were read), move up to the log
    /// start and go on, counting what was skipped
    /// ([`Consumer::skipped`]); otherwise [`Consumer::poll`] fails with
    /// `OffsetOutOfRange`. On by default.
    pub skip_deleted: bool,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            max_bytes: FETCH_MAX_BYTES_DEFAULT,
            skip_deleted: true,
        }
    }
}

/// One record as a consumer hands it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumedRecord {
    /// Its offset in the partition.
    pub offset: u64,
    /// Producer timestamp, Unix ms.
    pub timestamp_ms: i64,
    /// The key (empty when none).
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
    /// The record's headers, in order.
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Reads one partition of one topic, in offset order.
#[derive(Debug)]
pub struct Consumer {
    conn: Connection,
    topic: String,
    partition: u32,
    position: u64,
    config: ConsumerConfig,
    skipped: u64,
}

impl Consumer {
    /// Connects and positions the consumer; `Earliest` and `Latest` are
    /// resolved with a ListOffsets request.
    ///
    /// # Errors
    /// As [`Connection::connect`]; [`ClientError::Broker`] with
    /// `UnknownTopic` or `UnknownPartition` when resolving the start.
    pub fn connect(
        addr: impl ToSocketAddrs,
        topic: &str,
        partition: u32,
        from: StartFrom,
    ) -> Result<Consumer, ClientError> {
        Consumer::connect_with(addr, topic, partition, from, ConsumerConfig::default())
    }

    /// As [`Consumer::connect`], with a configuration.
    ///
    /// # Errors
    /// As [`Consumer::connect`].
    pub fn connect_with(
        addr: impl ToSocketAddrs,
        topic: &str,
        partition: u32,
        from: StartFrom,
        config: ConsumerConfig,
    ) -> Result<Consumer, ClientError> {
        let conn = Connection::connect(addr)?;
        let position = match from {
            StartFrom::Offset(offset) => offset,
            StartFrom::Earliest => list_offsets(&conn, topic, partition)?.earliest,
            StartFrom::Latest => list_offsets(&conn, topic, partition)?.latest,
            StartFrom::Time(ms) => {
                let r = super::admin::list_offsets_at(&conn, topic, partition, ms)?;
                r.time_offset.unwrap_or(r.latest)
            }
        };
        Ok(Consumer {
            conn,
            topic: topic.to_string(),
            partition,
            position,
            config,
            skipped: 0,
        })
    }

    /// Offsets skipped so far because retention deleted them before they
    /// were read ([`ConsumerConfig::skip_deleted`]).
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// The offset the next poll reads from.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Moves the read position to `offset`.
    pub fn seek(&mut self, offset: u64) {
        self.position = offset;
    }

    /// The underlying connection.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Fetches from the current position, waiting up to `max_wait` (at most
    /// 60 s) for at least one record, and advances the position past what
    /// it returns. An empty result means nothing arrived in time.
    ///
    /// # Errors
    /// [`ClientError::Broker`] (`OffsetOutOfRange` when the position is
    /// outside the stored range, `UnknownTopic`, ...);
    /// [`ClientError::Protocol`] for a batch that fails its checksums or a
    /// response with no whole batch; connection errors;
    /// [`ClientError::Timeout`] when no answer comes within `max_wait` plus
    /// [`FETCH_ANSWER_GRACE`].
    pub fn poll(&mut self, max_wait: Duration) -> Result<Vec<ConsumedRecord>, ClientError> {
        let max_wait_ms = max_wait.as_millis().min(FETCH_WAIT_MS_MAX as u128) as u32;
        let request = FetchRequest {
            topic: &self.topic,
            partition: self.partition,
            offset: self.position,
            max_bytes: self.config.max_bytes,
            max_wait_ms,
            min_bytes: 1,
        };
        let ticket = self.conn.send(ApiKey::Fetch, |out| request.encode(out))?;
        let wait = Duration::from_millis(max_wait_ms as u64) + FETCH_ANSWER_GRACE;
        // Decode in place: the fetch body stays in the connection's buffer.
        let position = self.position;
        let skip_deleted = self.config.skip_deleted;
        let (out, next, jumped) = ticket.wait_with(Some(wait), |header, body| {
            if header.error_code == ErrorCode::OffsetOutOfRange.as_u16() && skip_deleted {
                // Below the log start: those records are gone; go on from
                // the first one kept.
                if let (_, Some((start, _))) = OffsetRangeBody::decode(body) {
                    if start > position {
                        return Ok((Vec::new(), start, true));
                    }
                }
            }
            if header.error_code != 0 {
                return Err(ClientError::from_response(header.error_code, body));
            }
            decode_fetch(body, position).map(|(out, next)| (out, next, false))
        })??;
        if jumped {
            self.skipped += next - position;
        }
        self.position = next;
        Ok(out)
    }
}

/// Turns a fetch response body into the records at or above `from`, and
/// the position after them.
fn decode_fetch(body: &[u8], from: u64) -> Result<(Vec<ConsumedRecord>, u64), ClientError> {
    let response = FetchResponse::decode(body)?;
    let mut out = Vec::new();
    let mut next = from;
    let mut consumed = 0usize;
    for batch in split_batches(response.batches) {
        consumed += batch.len();
        let kind = check_stored_batch(batch)
            .map_err(|e| ClientError::Protocol(format!("fetched batch is corrupt: {e}")))?;
        let view = BatchView(batch);
        if kind == BatchKind::Data {
            for r in records(batch).filter(|r| r.offset >= from) {
                out.push(ConsumedRecord {
                    offset: r.offset,
                    timestamp_ms: r.timestamp_ms,
                    key: r.key.to_vec(),
                    value: r.value.to_vec(),
                    headers: r
                        .headers()
                        .map(|h| (h.key.to_vec(), h.value.to_vec()))
                        .collect(),
                });
            }
        }
        // Control batches hold no records for consumers but take offsets.
        next = next.max(view.next_offset());
    }
    if consumed == 0 && !response.batches.is_empty() {
        return Err(ClientError::Protocol(format!(
            "fetch answer holds {} bytes but no whole batch",
            response.batches.len()
        )));
    }
    Ok((out, next))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::fake::{self, FakeConn};
    use crate::wire::api::{ListOffsetsRequest, ListOffsetsResponse};
    use crate::wire::batch::{stamp, BatchBuilder, Header, Stamp};
    use crate::wire::ErrorCode;

    /// A stored batch of `values` starting at `base_offset`.
    fn stored_batch(base_offset: u64, values: &[&[u8]]) -> Vec<u8> {
        let mut b = BatchBuilder::new();
        for (i, v) in values.iter().enumerate() {
            let headers = [Header {
                key: b"n",
                value: &[i as u8],
            }];
            b.push(1000 + i as i64, b"k", v, &headers);
        }
        let mut batch = b.finish(0, 0).to_vec();
        stamp(
            &mut batch,
            &Stamp {
                base_offset,
                ..Stamp::default()
            },
        );
        batch
    }

    fn answer_fetch(c: &mut FakeConn, expect_offset: u64, batches: &[u8]) {
        let req = c.read_request().expect("a fetch");
        assert_eq!(req.header.api_key, ApiKey::Fetch.as_u16());
        let f = FetchRequest::decode(&req.body).unwrap();
        assert_eq!((f.topic, f.partition), ("orders", 1));
        assert_eq!(f.offset, expect_offset);
        assert_eq!((f.max_bytes, f.min_bytes), (FETCH_MAX_BYTES_DEFAULT, 1));
        let mut body = Vec::new();
        FetchResponse {
            high_watermark: 100,
            start_offset: 0,
            batches,
        }
        .encode(&mut body);
        c.reply(&req, 0, &body);
    }

    fn answer_list_offsets(c: &mut FakeConn, earliest: u64, latest: u64) {
        let req = c.read_request().expect("a list offsets");
        let lo = ListOffsetsRequest::decode(&req.body).unwrap();
        assert_eq!((lo.topic, lo.partition), ("orders", 1));
        let mut body = Vec::new();
        ListOffsetsResponse {
            earliest,
            latest,
            time_offset: None,
        }
        .encode(&mut body);
        c.reply(&req, 0, &body);
    }

    #[test]
    fn poll_skips_records_below_the_position_and_advances_it() {
        let broker = fake::spawn(|mut c| {
            answer_list_offsets(&mut c, 5, 9);
            // The first batch starts before the position (5).
            let mut batches = stored_batch(3, &[b"a", b"b", b"c", b"d"]);
            batches.extend(stored_batch(7, &[b"e"]));
            answer_fetch(&mut c, 5, &batches);
            answer_fetch(&mut c, 8, &[]);
            c.read_request();
        });
        let mut consumer =
            Consumer::connect(broker.addr, "orders", 1, StartFrom::Earliest).unwrap();
        assert_eq!(consumer.position(), 5);
        let got = consumer.poll(Duration::from_millis(10)).unwrap();
        let offsets: Vec<_> = got.iter().map(|r| (r.offset, r.value.clone())).collect();
        assert_eq!(
            offsets,
            vec![(5, b"c".to_vec()), (6, b"d".to_vec()), (7, b"e".to_vec())]
        );
        assert_eq!(got[0].key, b"k");
        assert_eq!(got[0].timestamp_ms, 1002);
        assert_eq!(got[0].headers, vec![(b"n".to_vec(), vec![2u8])]);
        assert_eq!(consumer.position(), 8);
        assert!(consumer.poll(Duration::ZERO).unwrap().is_empty());
        assert_eq!(consumer.position(), 8);
        drop(consumer);
        broker.join();
    }

    #[test]
    fn latest_starts_at_the_end_and_seek_moves_the_position() {
        let broker = fake::spawn(|mut c| {
            answer_list_offsets(&mut c, 0, 42);
            answer_fetch(&mut c, 2, &stored_batch(2, &[b"x"]));
            c.read_request();
        });
        let mut consumer = Consumer::connect(broker.addr, "orders", 1, StartFrom::Latest).unwrap();
        assert_eq!(consumer.position(), 42);
        consumer.seek(2);
        let got = consumer.poll(Duration::from_millis(10)).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(consumer.position(), 3);
        drop(consumer);
        broker.join();
    }

    #[test]
    fn a_corrupt_batch_is_a_protocol_error() {
        let broker = fake::spawn(|mut c| {
            let mut batch = stored_batch(0, &[b"x"]);
            let last = batch.len() - 1;
            batch[last] ^= 1;
            answer_fetch(&mut c, 0, &batch);
            answer_fetch(&mut c, 0, &[1, 2, 3]);
            c.read_request();
        });
        let mut consumer =
            Consumer::connect(broker.addr, "orders", 1, StartFrom::Offset(0)).unwrap();
        let err = consumer.poll(Duration::ZERO).unwrap_err();
        assert!(matches!(err, ClientError::Protocol(_)), "{err:?}");
        assert_eq!(consumer.position(), 0);
        let err = consumer.poll(Duration::ZERO).unwrap_err();
        assert!(matches!(err, ClientError::Protocol(_)), "{err:?}");
        drop(consumer);
        broker.join();
    }

    #[test]
    fn a_fetch_error_is_a_broker_error() {
        let broker = fake::spawn(|mut c| {
            let req = c.read_request().unwrap();
            c.reply_error(&req, ErrorCode::OffsetOutOfRange, "");
            c.read_request();
        });
        let mut consumer =
            Consumer::connect(broker.addr, "orders", 1, StartFrom::Offset(99)).unwrap();
        let err = consumer.poll(Duration::ZERO).unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::OffsetOutOfRange));
        assert_eq!(consumer.position(), 99);
        drop(consumer);
        broker.join();
    }

    #[test]
    fn a_position_below_the_log_start_moves_up_to_it_and_counts_the_skip() {
        let out_of_range = |c: &mut FakeConn, start: u64| {
            let req = c.read_request().unwrap();
            let mut body = Vec::new();
            OffsetRangeBody {
                message: "gone",
                start_offset: start,
                end_offset: 90,
            }
            .encode(&mut body);
            c.reply(&req, ErrorCode::OffsetOutOfRange.as_u16(), &body);
        };
        let broker = fake::spawn(move |mut c| {
            out_of_range(&mut c, 40);
            answer_fetch(&mut c, 40, &stored_batch(40, &[b"kept"]));
            // A range that does not lie above the position is an error.
            out_of_range(&mut c, 0);
            c.read_request();
        });
        let mut consumer =
            Consumer::connect(broker.addr, "orders", 1, StartFrom::Offset(7)).unwrap();
        assert!(consumer.poll(Duration::ZERO).unwrap().is_empty());
        assert_eq!((consumer.position(), consumer.skipped()), (40, 33));
        let got = consumer.poll(Duration::ZERO).unwrap();
        assert_eq!((got[0].offset, consumer.position()), (40, 41));
        let err = consumer.poll(Duration::ZERO).unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::OffsetOutOfRange));
        assert_eq!((consumer.position(), consumer.skipped()), (41, 33));
        drop(consumer);
        broker.join();
    }

    /// Review finding: a broker from before this change advertises ListOffsets
    /// 1..1 in its handshake and refuses version 2 (reactor:
    /// UnsupportedVersion). Consumer::connect(Earliest) needs nothing of
    /// version 2, yet the client always sends `ApiKey::versions().1` and
    /// ignores the handshake's API versions.
    #[test]
    fn earliest_works_against_a_broker_that_speaks_list_offsets_1_only() {
        use crate::wire::api::ApiVersions;
        let broker = fake::spawn_raw(|mut c| {
            let req = c.read_request().expect("a handshake");
            let older = ApiVersions::spoken()
                .into_iter()
                .map(|a| ApiVersions {
                    max_version: 1,
                    ..a
                })
                .collect();
            c.answer_handshake_with(&req, 1, older);
            let req = c.read_request().expect("a list offsets");
            if req.header.api_version != 1 {
                // What the older broker's reactor answers.
                c.reply_error(
                    &req,
                    ErrorCode::UnsupportedVersion,
                    "unsupported API version",
                );
                return;
            }
            let lo = ListOffsetsRequest::decode(&req.body).unwrap();
            assert_eq!((lo.topic, lo.partition), ("orders", 1));
            let mut body = Vec::new();
            ListOffsetsResponse {
                earliest: 5,
                latest: 9,
                time_offset: None,
            }
            .encode(&mut body);
            c.reply(&req, 0, &body);
        });
        let r = Consumer::connect(broker.addr, "orders", 1, StartFrom::Earliest);
        assert!(
            r.is_ok(),
            "against a ListOffsets 1..1 broker: {:?}",
            r.err()
        );
    }
}
