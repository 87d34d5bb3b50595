//! Wire frames: `[version: u8][length: u32 little-endian][payload]`.
//!
//! Every transport carries exactly these bytes, so the in-memory and TCP paths put the same
//! bytes on the wire and count the same costs.

use crate::NetError;

/// Version of the comet wire protocol; a peer with another version is rejected.
pub const PROTOCOL_VERSION: u8 = 1;
/// Bytes of frame header before each payload.
pub const HEADER_LEN: usize = 5;
/// Largest payload accepted in one frame (1 GiB).
pub const MAX_FRAME: usize = 1 << 30;

/// Encodes one payload as a frame.
pub fn encode(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    encode_into(payload, &mut out);
    out
}

/// Appends the frame of `payload` to `out`.
pub fn encode_into(payload: &[u8], out: &mut Vec<u8>) {
    out.push(PROTOCOL_VERSION);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Parses a frame header, checking the version and the announced length.
pub fn parse_header(header: &[u8; HEADER_LEN], max: usize) -> Result<usize, NetError> {
    if header[0] != PROTOCOL_VERSION {
        return Err(NetError::Version {
            got: header[0],
            expected: PROTOCOL_VERSION,
        });
    }
    let len = u32::from_le_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if len > max {
        return Err(NetError::TooLarge { len, max });
    }
    Ok(len)
}

/// Decodes a complete frame held in one buffer, checking version and length exactly.
pub fn decode(frame: &[u8]) -> Result<&[u8], NetError> {
    if frame.len() < HEADER_LEN {
        return Err(NetError::Malformed(format!(
            "truncated frame: {} bytes, shorter than the {HEADER_LEN}-byte header",
            frame.len()
        )));
    }
    let header: [u8; HEADER_LEN] = frame[..HEADER_LEN].try_into().expect("length checked");
    let len = parse_header(&header, MAX_FRAME)?;
    let body = &frame[HEADER_LEN..];
    if body.len() != len {
        return Err(NetError::Malformed(format!(
            "truncated or oversized frame: header announces {len} bytes, {} present",
            body.len()
        )));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let f = encode(b"hello");
        assert_eq!(decode(&f).unwrap(), b"hello");
        assert!(matches!(decode(&f[..7]), Err(NetError::Malformed(_))));
        assert!(matches!(decode(&f[..3]), Err(NetError::Malformed(_))));
        let mut bad = f.clone();
        bad[0] = 9;
        assert!(matches!(
            decode(&bad),
            Err(NetError::Version { got: 9, .. })
        ));
        let header: [u8; HEADER_LEN] = [PROTOCOL_VERSION, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            parse_header(&header, 100),
            Err(NetError::TooLarge { .. })
        ));
    }
}
