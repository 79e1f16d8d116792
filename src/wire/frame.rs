//! Framing: the length prefix and the fixed request and response headers.
//!
//! ```text
//! request  = u32 length | u16 api_key | u16 api_version | u32 correlation_id | u16 flags | u16 reserved | body
//! response = u32 length | u32 correlation_id | u16 api_key | u16 error_code | body
//! ```
//! `length` counts the bytes after the length field itself.

use super::codec::{le_u32, set_u32};
use super::error::ErrorCode;

/// Bytes of the length prefix.
pub const LENGTH_PREFIX_LEN: usize = 4;
/// Bytes of a request header, length prefix included.
pub const REQUEST_HEADER_LEN: usize = 16;
/// Bytes of a response header, length prefix included.
pub const RESPONSE_HEADER_LEN: usize = 12;

/// The fixed part of every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    /// Which API the body is for.
    pub api_key: u16,
    /// The version of that API the body is encoded in.
    pub api_version: u16,
    /// Chosen by the client; echoed in the response.
    pub correlation_id: u32,
    /// Reserved for future use; clients send 0.
    pub flags: u16,
}

impl RequestHeader {
    /// Reads the header of a whole frame (length prefix included).
    /// The caller guarantees `frame.len() >= REQUEST_HEADER_LEN`.
    pub fn parse(frame: &[u8]) -> RequestHeader {
        RequestHeader {
            api_key: u16::from_le_bytes([frame[4], frame[5]]),
            api_version: u16::from_le_bytes([frame[6], frame[7]]),
            correlation_id: le_u32(frame, 8),
            flags: u16::from_le_bytes([frame[12], frame[13]]),
        }
    }

    /// Appends this header with a zero length prefix to `out`; call
    /// [`finish_frame`] once the body is written.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&self.api_key.to_le_bytes());
        out.extend_from_slice(&self.api_version.to_le_bytes());
        out.extend_from_slice(&self.correlation_id.to_le_bytes());
        out.extend_from_slice(&self.flags.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
    }
}

/// The fixed part of every response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHeader {
    /// The correlation id of the request this answers.
    pub correlation_id: u32,
    /// The API key of the request this answers.
    pub api_key: u16,
    /// [`ErrorCode::None`] on success; otherwise the body is an error body.
    pub error_code: u16,
}

impl ResponseHeader {
    /// Reads the header of a whole frame (length prefix included).
    /// The caller guarantees `frame.len() >= RESPONSE_HEADER_LEN`.
    pub fn parse(frame: &[u8]) -> ResponseHeader {
        ResponseHeader {
            correlation_id: le_u32(frame, 4),
            api_key: u16::from_le_bytes([frame[8], frame[9]]),
            error_code: u16::from_le_bytes([frame[10], frame[11]]),
        }
    }

    /// The header as bytes, with the length prefix for a body of `body_len` bytes.
    pub fn to_bytes(&self, body_len: usize) -> [u8; RESPONSE_HEADER_LEN] {
        let mut b = [0u8; RESPONSE_HEADER_LEN];
        set_u32(
            &mut b,
            0,
            (RESPONSE_HEADER_LEN - LENGTH_PREFIX_LEN + body_len) as u32,
        );
        set_u32(&mut b, 4, self.correlation_id);
        b[8..10].copy_from_slice(&self.api_key.to_le_bytes());
        b[10..12].copy_from_slice(&self.error_code.to_le_bytes());
        b
    }

    /// Appends this header with a zero length prefix to `out`; call
    /// [`finish_frame`] once the body is written.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_bytes(0));
    }
}

/// Encodes a whole request frame: header, the body `body` appends, and the
/// length prefix.
pub fn request_frame(
    api_key: u16,
    api_version: u16,
    correlation_id: u32,
    body: impl FnOnce(&mut Vec<u8>),
) -> Vec<u8> {
    let mut out = Vec::new();
    RequestHeader {
        api_key,
        api_version,
        correlation_id,
        flags: 0,
    }
    .write(&mut out);
    body(&mut out);
    finish_frame(&mut out, 0);
    out
}

/// Sets the length prefix of the frame that starts at `start` in `out` and
/// runs to its end.
///
/// # Panics
/// If the frame is longer than a `u32` length prefix can say.
pub fn finish_frame(out: &mut [u8], start: usize) {
    finish_frame_before(out, start, 0);
}

/// Sets the length prefix of the frame that starts at `start` in `out`, runs
/// to its end, and continues with `tail_len` more bytes the caller sends
/// from another buffer (a payload read from files, for example).
///
/// # Panics
/// If the frame is longer than a `u32` length prefix can say.
pub fn finish_frame_before(out: &mut [u8], start: usize, tail_len: u64) {
    let len = (out.len() - start - LENGTH_PREFIX_LEN) as u64 + tail_len;
    let len = u32::try_from(len).expect("frame length fits its u32 prefix");
    set_u32(out, start, len);
}

/// Why a buffered frame cannot be served. Framing errors below
/// [`FrameError::TooLarge`] lose the frame boundary, so the connection must
/// be closed after answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The length prefix announces a frame above the maximum frame size.
    TooLarge { len: usize, max: usize },
    /// The length prefix announces a frame too short to hold its header.
    TooShort { len: usize },
}

impl FrameError {
    /// The error code sent before closing.
    pub fn code(self) -> ErrorCode {
        match self {
            FrameError::TooLarge { .. } => ErrorCode::FrameTooLarge,
            FrameError::TooShort { .. } => ErrorCode::MalformedRequest,
        }
    }
}

/// Looks at the start of `buf` and says whether a whole frame is buffered.
///
/// Returns `Ok(Some(total))` with the frame's total size (length prefix
/// included) when it is all there, `Ok(None)` when more bytes are needed.
/// `min_len` is the smallest legal frame (header included), `max_len` the
/// largest.
///
/// # Errors
/// [`FrameError`] when the length prefix is out of bounds; framing is lost.
pub fn check_frame(
    buf: &[u8],
    min_len: usize,
    max_len: usize,
) -> Result<Option<usize>, FrameError> {
    if buf.len() < LENGTH_PREFIX_LEN {
        return Ok(None);
    }
    let total = le_u32(buf, 0) as usize + LENGTH_PREFIX_LEN;
    if total > max_len {
        return Err(FrameError::TooLarge {
            len: total,
            max: max_len,
        });
    }
    if total < min_len {
        return Err(FrameError::TooShort { len: total });
    }
    Ok(if buf.len() >= total {
        Some(total)
    } else {
        None
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_header_round_trips() {
        let h = RequestHeader {
            api_key: 4,
            api_version: 1,
            correlation_id: 99,
            flags: 0,
        };
        let mut out = Vec::new();
        h.write(&mut out);
        out.extend_from_slice(b"body");
        finish_frame(&mut out, 0);
        assert_eq!(check_frame(&out, REQUEST_HEADER_LEN, 1 << 20), Ok(Some(20)));
        assert_eq!(RequestHeader::parse(&out), h);
    }

    #[test]
    fn check_frame_waits_for_the_whole_frame() {
        let mut out = Vec::new();
        ResponseHeader {
            correlation_id: 1,
            api_key: 1,
            error_code: 0,
        }
        .write(&mut out);
        out.extend_from_slice(&[1, 2, 3]);
        finish_frame(&mut out, 0);
        for cut in 0..out.len() {
            assert_eq!(check_frame(&out[..cut], RESPONSE_HEADER_LEN, 100), Ok(None));
        }
        assert_eq!(check_frame(&out, RESPONSE_HEADER_LEN, 100), Ok(Some(15)));
    }

    #[test]
    fn check_frame_rejects_bad_lengths() {
        let big = (1000u32).to_le_bytes();
        assert_eq!(
            check_frame(&big, 16, 100),
            Err(FrameError::TooLarge {
                len: 1004,
                max: 100
            })
        );
        let small = (3u32).to_le_bytes();
        assert_eq!(
            check_frame(&small, 16, 100),
            Err(FrameError::TooShort { len: 7 })
        );
    }
}
