//! Identifiers used across the cluster.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A storage node id: stable for the node's life (the StatefulSet ordinal + 1 in
/// Kubernetes). 0 is never a valid node id.
pub type NodeId = u64;

/// A volume id, allocated by the metadata state machine; never reused.
pub type VolumeId = u64;

/// An inode number inside a volume. 1 is the root directory.
pub type Ino = u64;

/// The root directory of every volume.
pub const ROOT_INO: Ino = 1;

/// An immutable block's id: 128 random bits chosen by the writer.
///
/// Ids are random rather than content hashes on purpose: a content-addressed id could be
/// garbage-collected (its last reference dropped) while another writer is uploading the
/// same content, losing data. A fresh random id can only be referenced by the writer that
/// chose it, so reference counting stays trivially safe.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BlockId(pub [u8; 16]);

impl BlockId {
    pub fn from_u128(v: u128) -> Self {
        BlockId(v.to_be_bytes())
    }

    pub fn as_u128(&self) -> u128 {
        u128::from_be_bytes(self.0)
    }

    pub fn from_slice(b: &[u8]) -> Option<Self> {
        let arr: [u8; 16] = b.try_into().ok()?;
        Some(BlockId(arr))
    }

    /// The partition this block belongs to. The id is already uniformly random, but it
    /// is mixed anyway so that non-random ids (tests, future formats) still spread.
    pub fn partition(&self, partitions: u32) -> u32 {
        let mut h = self.as_u128() as u64 ^ (self.as_u128() >> 64) as u64;
        // splitmix64 finalizer
        h ^= h >> 30;
        h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h ^= h >> 27;
        h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
        h ^= h >> 31;
        (h % u64::from(partitions.max(1))) as u32
    }
}

impl fmt::Display for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlockId({self})")
    }
}

impl FromStr for BlockId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let v = hex::decode(s).map_err(|e| format!("block id {s:?} is not hex: {e}"))?;
        BlockId::from_slice(&v).ok_or_else(|| format!("block id {s:?} must be 32 hex digits"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_id_roundtrips_through_hex() {
        let id = BlockId::from_u128(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        let s = id.to_string();
        assert_eq!(s, "0123456789abcdef0011223344556677");
        assert_eq!(s.parse::<BlockId>(), Ok(id));
        assert!("xyz".parse::<BlockId>().is_err());
        assert!("00".parse::<BlockId>().is_err());
    }

    #[test]
    fn partitions_spread_evenly() {
        let p = 64u32;
        let mut counts = vec![0u32; p as usize];
        for i in 0..64_000u128 {
            counts[BlockId::from_u128(i).partition(p) as usize] += 1;
        }
        let (min, max) = (counts.iter().min().copied(), counts.iter().max().copied());
        assert!(min > Some(800) && max < Some(1200), "{min:?} {max:?}");
    }
}
