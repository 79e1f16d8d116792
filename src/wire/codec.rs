//! Primitive little-endian encoding shared by every message of the protocol.
//!
//! Decoding goes through [`Reader`], a bounds-checked cursor: every read of a
//! field that is not there returns [`DecodeError`] instead of panicking,
//! because these bytes come from the network or from a file.

use thiserror::Error;

/// A field could not be decoded from the bytes given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The buffer ended before the field did.
    #[error("truncated: {field} needs {needed} more bytes")]
    Truncated { field: &'static str, needed: usize },
    /// A string field is not valid UTF-8.
    #[error("{field} is not valid UTF-8")]
    InvalidUtf8 { field: &'static str },
    /// Bytes were left over after the last field of a message.
    #[error("{extra} unexpected trailing bytes")]
    TrailingBytes { extra: usize },
    /// A field holds a value outside its documented range.
    #[error("invalid value for {field}")]
    InvalidValue { field: &'static str },
}

/// A bounds-checked little-endian cursor over a byte slice.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Starts reading at the beginning of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Bytes read so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Takes the next `len` bytes.
    ///
    /// # Errors
    /// [`DecodeError::Truncated`] when fewer than `len` bytes remain.
    pub fn take(&mut self, len: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < len {
            return Err(DecodeError::Truncated {
                field,
                needed: len - self.remaining(),
            });
        }
        let out = &self.buf[self.pos..self.pos + len];
        self.pos += len;
        Ok(out)
    }

    /// Takes every byte that is left.
    pub fn rest(&mut self) -> &'a [u8] {
        let out = &self.buf[self.pos..];
        self.pos = self.buf.len();
        out
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let bytes = self.take(N, field)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    /// Reads a `u8`.
    pub fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    /// Reads a little-endian `u16`.
    pub fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }

    /// Reads a little-endian `u32`.
    pub fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    /// Reads a little-endian `i32`.
    pub fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_le_bytes(self.array(field)?))
    }

    /// Reads a little-endian `u64`.
    pub fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    /// Reads a little-endian `i64`.
    pub fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_le_bytes(self.array(field)?))
    }

    /// Reads a string: `u16` byte length, then UTF-8 bytes.
    pub fn str(&mut self, field: &'static str) -> Result<&'a str, DecodeError> {
        let len = self.u16(field)? as usize;
        let bytes = self.take(len, field)?;
        std::str::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8 { field })
    }

    /// Reads a byte string: `u32` byte length, then the bytes.
    pub fn bytes(&mut self, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let len = self.u32(field)? as usize;
        self.take(len, field)
    }

    /// Checks that the whole buffer was consumed.
    ///
    /// # Errors
    /// [`DecodeError::TrailingBytes`] when bytes are left.
    pub fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(DecodeError::TrailingBytes { extra }),
        }
    }
}

/// Appends little-endian fields to a growable buffer.
pub trait Put {
    /// Appends a `u8`.
    fn put_u8(&mut self, v: u8);
    /// Appends a little-endian `u16`.
    fn put_u16(&mut self, v: u16);
    /// Appends a little-endian `u32`.
    fn put_u32(&mut self, v: u32);
    /// Appends a little-endian `i32`.
    fn put_i32(&mut self, v: i32);
    /// Appends a little-endian `u64`.
    fn put_u64(&mut self, v: u64);
    /// Appends a little-endian `i64`.
    fn put_i64(&mut self, v: i64);
    /// Appends a string (`u16` length + UTF-8). Longer strings are cut at
    /// 65,535 bytes; callers validate lengths before encoding.
    fn put_str(&mut self, v: &str);
    /// Appends a byte string (`u32` length + bytes).
    fn put_bytes(&mut self, v: &[u8]);
}

impl Put for Vec<u8> {
    fn put_u8(&mut self, v: u8) {
        self.push(v);
    }
    fn put_u16(&mut self, v: u16) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_u32(&mut self, v: u32) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_i32(&mut self, v: i32) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_u64(&mut self, v: u64) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_i64(&mut self, v: i64) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_str(&mut self, v: &str) {
        let len = v.len().min(u16::MAX as usize);
        self.put_u16(len as u16);
        self.extend_from_slice(&v.as_bytes()[..len]);
    }
    fn put_bytes(&mut self, v: &[u8]) {
        self.put_u32(v.len() as u32);
        self.extend_from_slice(v);
    }
}

/// Reads a little-endian `u32` at `at`; the caller guarantees the bounds.
pub fn le_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

/// Reads a little-endian `u64` at `at`; the caller guarantees the bounds.
pub fn le_u64(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(b)
}

/// Writes a little-endian `u32` at `at`; the caller guarantees the bounds.
pub fn set_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// Writes a little-endian `u64` at `at`; the caller guarantees the bounds.
pub fn set_u64(buf: &mut [u8], at: usize, v: u64) {
    buf[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_reports_truncation_instead_of_panicking() {
        let mut r = Reader::new(&[1, 0, 0]);
        assert_eq!(
            r.u32("x"),
            Err(DecodeError::Truncated {
                field: "x",
                needed: 1
            })
        );
        assert_eq!(r.u16("y"), Ok(1));
        assert!(r.finish().is_err());
    }

    #[test]
    fn put_and_read_round_trip() {
        let mut v = Vec::new();
        v.put_u8(7);
        v.put_u16(0xBEEF);
        v.put_u32(0xDEAD_BEEF);
        v.put_i64(-5);
        v.put_str("hutong");
        v.put_bytes(b"abc");
        let mut r = Reader::new(&v);
        assert_eq!(r.u8("a").unwrap(), 7);
        assert_eq!(r.u16("b").unwrap(), 0xBEEF);
        assert_eq!(r.u32("c").unwrap(), 0xDEAD_BEEF);
        assert_eq!(r.i64("d").unwrap(), -5);
        assert_eq!(r.str("e").unwrap(), "hutong");
        assert_eq!(r.bytes("f").unwrap(), b"abc");
        r.finish().unwrap();
    }

    #[test]
    fn invalid_utf8_is_an_error() {
        let mut r = Reader::new(&[2, 0, 0xff, 0xfe]);
        assert_eq!(r.str("s"), Err(DecodeError::InvalidUtf8 { field: "s" }));
    }
}
