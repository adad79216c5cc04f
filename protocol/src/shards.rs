//! Which shard of a broker owns a queue: the broker's store and shard-aware clients must agree,
//! so the function is part of the protocol (`docs/format.md`, "Shards"). A broker that
//! advertises `n` shard addresses owns queue `(topic, queue_id)` on shard
//! `fnv1a64(topic bytes ‖ queue_id as u32 little-endian) mod n`.

/// FNV-1a, 64-bit, over the concatenation of `parts`.
fn fnv1a64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// The shard owning `(topic, queue_id)` on a broker of `shards` shards (0 for `shards` 0).
pub fn queue_shard(topic: &str, queue_id: u32, shards: usize) -> usize {
    if shards == 0 {
        return 0;
    }
    (fnv1a64(&[topic.as_bytes(), &queue_id.to_le_bytes()]) % shards as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values_and_spread() {
        // FNV-1a 64 of the empty input is its offset basis.
        assert_eq!(fnv1a64(&[]), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(&[b"a"]), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(queue_shard("T", 0, 1), 0);
        assert_eq!(queue_shard("T", 0, 0), 0);
        let mut per = [0usize; 4];
        for q in 0..4000 {
            per[queue_shard("Orders", q, 4)] += 1;
        }
        assert!(per.iter().all(|&n| n > 800), "{per:?}");
    }
}
