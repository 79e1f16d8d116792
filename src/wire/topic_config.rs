//! A topic's own settings, as control records, state files and the wire
//! carry them: each one a `u64`, [`SETTING_DEFAULT`] for a setting left to
//! the broker.

use super::codec::{DecodeError, Put, Reader};

/// How a [`TopicConfig`] setting left to the broker's default is written
/// (in control records, state files and on the wire): every other value is
/// the setting itself, 0 meaning no limit.
pub const SETTING_DEFAULT: u64 = u64::MAX;

/// A topic's own settings; `None` leaves a setting to the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TopicConfig {
    /// Records older than this many ms go (0: no time limit); `None`: the
    /// broker's `retention_ms`.
    pub retention_ms: Option<u64>,
    /// Bytes each partition keeps at least (0 or `None`: no per-partition
    /// limit; the broker's `retention_bytes` bounds the whole journal
    /// either way).
    pub retention_bytes: Option<u64>,
}

impl TopicConfig {
    /// True when every setting is left to the broker.
    pub fn is_default(&self) -> bool {
        *self == TopicConfig::default()
    }

    /// Appends `u64 retention_ms | u64 retention_bytes`, each
    /// [`SETTING_DEFAULT`] when left to the broker.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.put_u64(encode_setting(self.retention_ms));
        out.put_u64(encode_setting(self.retention_bytes));
    }

    /// Reads what [`TopicConfig::encode`] wrote.
    ///
    /// # Errors
    /// The decode error of a truncated input.
    pub fn decode(r: &mut Reader<'_>) -> Result<TopicConfig, DecodeError> {
        Ok(TopicConfig {
            retention_ms: decode_setting(r.u64("retention_ms")?),
            retention_bytes: decode_setting(r.u64("retention_bytes")?),
        })
    }

    /// The time limit that applies to the topic when the broker's is
    /// `broker_ms` (`None`: none).
    pub fn effective_ms(&self, broker_ms: Option<u64>) -> Option<u64> {
        match self.retention_ms {
            None => broker_ms,
            Some(0) => None,
            Some(ms) => Some(ms),
        }
    }

    /// The per-partition size limit (`None`: none).
    pub fn bytes_limit(&self) -> Option<u64> {
        self.retention_bytes.filter(|&b| b > 0)
    }
}

/// A setting as written: [`SETTING_DEFAULT`] for `None`. A value of
/// `u64::MAX` itself cannot be told from the default; it means no limit in
/// practice, and is written as 0.
pub fn encode_setting(s: Option<u64>) -> u64 {
    match s {
        None => SETTING_DEFAULT,
        Some(SETTING_DEFAULT) => 0,
        Some(v) => v,
    }
}

/// A setting as read back.
pub fn decode_setting(v: u64) -> Option<u64> {
    (v != SETTING_DEFAULT).then_some(v)
}
