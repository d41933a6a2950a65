//! Block files (node-server/src/blocks.rs, format `RFB1`) read back from disk, where
//! any byte may have rotted. Two modes, chosen by the first input byte:
//! - even: the rest is a block file. Decoding never panics; when it succeeds the data
//!   has the header's length and crc32c, and re-encoding it gives the same file back
//!   (so a file that decodes is exactly one a put writes). Ranged reads of it
//!   (offset/length from the input) never panic and return the right bytes.
//! - odd: the rest is block data. Its encoding decodes to the same data, and flipping
//!   any one byte of the file (chosen by the input) is detected as corruption.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringfs_core::BlockId;
use ringfs_fuzz::write_seeds;
use ringfs_node::blocks::{decode_block_file, encode_block_file, read_range, BlockError};

const ID: BlockId = BlockId([7; 16]);

fn seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for data in [&b"x"[..], b"hello, ringfs", &[0xa5; 70_000]] {
        let mut s = vec![0u8];
        s.extend(encode_block_file(data).unwrap_or_default());
        out.push(s);
        let mut s = vec![1u8];
        s.extend_from_slice(data);
        out.push(s);
    }
    out
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    let mut w = [0u8; 4];
    for (j, x) in w.iter_mut().enumerate() {
        *x = b.get(i + j).copied().unwrap_or(0);
    }
    u32::from_le_bytes(w)
}

fuzz_target!(
    init: {
        write_seeds("block_file", seeds);
    },
    |data: &[u8]| {
        let Some((&mode, rest)) = data.split_first() else {
            return;
        };
        if mode % 2 == 0 {
            // Offset and length of a ranged read come from the (checksummed) tail.
            let (off, len) = (u32_at(rest, 8), u32_at(rest, 12));
            if let Ok(read) = decode_block_file(ID, rest) {
                assert_eq!(read.data.len() as u64, u64::from(read.block.len));
                assert_eq!(ringfs_core::slice::checksum(&read.data), read.block.crc);
                assert_eq!(
                    encode_block_file(&read.data).as_deref(),
                    Some(rest),
                    "a file that decodes must be the one a put writes"
                );
                let (off, len) = (off % (read.block.len + 1), len % (read.block.len + 1));
                match read_range(ID, rest, off, len) {
                    Ok(part) => {
                        let want = if len == 0 { read.block.len - off } else { len };
                        let got = part.range(off, want);
                        let end = (off + want) as usize;
                        assert_eq!(got.as_deref(), read.data.get(off as usize..end));
                    }
                    Err(BlockError::OutOfRange { .. }) => assert!(off + len > read.block.len),
                    Err(e) => panic!("range of a valid block failed: {e}"),
                }
            } else {
                let _ = read_range(ID, rest, off, len);
            }
        } else {
            let Some(file) = encode_block_file(rest) else {
                assert!(rest.is_empty() || rest.len() > ringfs_core::slice::MAX_BLOCK_SIZE as usize);
                return;
            };
            let read = match decode_block_file(ID, &file) {
                Ok(r) => r,
                Err(e) => panic!("a freshly encoded block does not decode: {e}"),
            };
            assert_eq!(&read.data[..], rest);
            let mut bad = file.clone();
            let at = (u32_at(rest, 0) as usize) % bad.len();
            bad[at] ^= 1 << (mode % 8);
            assert!(
                matches!(decode_block_file(ID, &bad), Err(BlockError::Corrupt { .. })),
                "a flipped bit at byte {at} went unnoticed"
            );
        }
    }
);
