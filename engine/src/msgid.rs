//! Message ids: the store host, the shard and the physical offset, as 32 hex digits (like
//! RocketMQ's offset message id, which is host + offset). Pure.

use std::net::{IpAddr, SocketAddr};

/// `ip (4, IPv4 or the low 4 bytes of IPv6) | port (2) | shard (2) | offset (8)`, big-endian,
/// upper-case hex.
pub fn encode(host: SocketAddr, shard: usize, offset: u64) -> String {
    let ip = match host.ip() {
        IpAddr::V4(v4) => v4.octets(),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            [o[12], o[13], o[14], o[15]]
        }
    };
    let mut bytes = [0u8; 16];
    bytes[..4].copy_from_slice(&ip);
    bytes[4..6].copy_from_slice(&host.port().to_be_bytes());
    bytes[6..8].copy_from_slice(&(shard as u16).to_be_bytes());
    bytes[8..].copy_from_slice(&offset.to_be_bytes());
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(32);
    for b in bytes {
        out.push(HEX[(b >> 4) as usize] as char);
        out.push(HEX[(b & 0xF) as usize] as char);
    }
    out
}

/// The (shard, offset) a message id names, or `None` if it is not one of ours.
pub fn decode(id: &str) -> Option<(usize, u64)> {
    if id.len() != 32 || !id.is_ascii() {
        return None;
    }
    let mut bytes = [0u8; 16];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = u8::from_str_radix(&id[2 * i..2 * i + 2], 16).ok()?;
    }
    let shard = u16::from_be_bytes([bytes[6], bytes[7]]) as usize;
    let mut offset = [0u8; 8];
    offset.copy_from_slice(&bytes[8..]);
    Some((shard, u64::from_be_bytes(offset)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let id = encode("10.0.0.7:10911".parse().unwrap(), 3, 0x1234_5678_9ABC);
        assert_eq!(id.len(), 32);
        assert_eq!(decode(&id), Some((3, 0x1234_5678_9ABC)));
        assert_eq!(id, "0A0000072A9F00030000123456789ABC");
        assert_eq!(decode("nope"), None);
        assert_eq!(decode(&"Z".repeat(32)), None);
        assert_eq!(decode("é".repeat(16).as_str()), None);
    }
}
