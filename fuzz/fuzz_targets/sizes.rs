//! Sizes typed by users: `ringfs` / node flags (`parse_size`: `10GiB`, `1.5T`, `4096`)
//! and Kubernetes quantities in DfsCluster/DfsVolume specs (`parse_quantity`: `10Gi`).
//! Contracts checked: no panic on any text; an integer with a unit parses to exactly
//! number × unit (or is refused when that overflows u64, never wraps or rounds);
//! `format_size` output parses back to within its printed precision.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringfs_api::parse_quantity;
use ringfs_core::units::{format_size, parse_size};
use ringfs_fuzz::write_seeds;

const SIZE_UNITS: [(&str, u64); 14] = [
    ("", 1),
    ("B", 1),
    ("K", 1 << 10),
    ("KiB", 1 << 10),
    ("M", 1 << 20),
    ("MiB", 1 << 20),
    ("G", 1 << 30),
    ("gib", 1 << 30),
    ("T", 1 << 40),
    ("TiB", 1 << 40),
    ("PiB", 1 << 50),
    ("KB", 1_000),
    ("GB", 1_000_000_000),
    ("TB", 1_000_000_000_000),
];

const QUANTITY_UNITS: [(&str, u64); 11] = [
    ("", 1),
    ("k", 1_000),
    ("M", 1_000_000),
    ("G", 1_000_000_000),
    ("T", 1_000_000_000_000),
    ("P", 1_000_000_000_000_000),
    ("Ki", 1 << 10),
    ("Mi", 1 << 20),
    ("Gi", 1 << 30),
    ("Ti", 1 << 40),
    ("Pi", 1 << 50),
];

fn seeds() -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = ["10GiB", "1.5MiB", "4096", "2TB", "10Gi", "512Mi", " 7 k "]
        .iter()
        .map(|s| [&[0u8][..], s.as_bytes()].concat())
        .collect();
    out.push([&[1u8, 3][..], &9_007_199_254_740_993u64.to_le_bytes()].concat());
    out
}

fn word(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    for (x, y) in w.iter_mut().zip(b) {
        *x = *y;
    }
    u64::from_le_bytes(w)
}

fuzz_target!(
    init: {
        write_seeds("sizes", seeds);
    },
    |data: &[u8]| {
        let Some((&mode, rest)) = data.split_first() else {
            return;
        };
        if mode % 2 == 0 {
            // Free text: never panics.
            let s = String::from_utf8_lossy(rest);
            let _ = parse_size(&s);
            let _ = parse_quantity(&s);
            return;
        }
        // A number and a unit picked by the input.
        let Some((&unit, rest)) = rest.split_first() else {
            return;
        };
        let n = word(rest);
        let (suffix, mult) = SIZE_UNITS[unit as usize % SIZE_UNITS.len()];
        let text = format!("{n}{suffix}");
        match n.checked_mul(mult) {
            Some(want) => assert_eq!(parse_size(&text).ok(), Some(want), "parse_size({text:?})"),
            None => assert!(parse_size(&text).is_err(), "parse_size({text:?}) overflowed"),
        }
        let (suffix, mult) = QUANTITY_UNITS[unit as usize % QUANTITY_UNITS.len()];
        let text = format!("{n}{suffix}");
        assert_eq!(parse_quantity(&text).ok(), n.checked_mul(mult), "parse_quantity({text:?})");

        // Near u64::MAX the printed value rounds past it; such sizes are not typed.
        if n >= 1 << 60 {
            return;
        }
        let shown = format_size(n);
        let back = match parse_size(&shown) {
            Ok(b) => b,
            Err(e) => panic!("format_size({n}) = {shown:?} does not parse: {e}"),
        };
        // One decimal digit of the unit format_size picked: at most 0.05 unit off.
        let unit_bytes = [1u64 << 50, 1 << 40, 1 << 30, 1 << 20, 1 << 10]
            .into_iter()
            .find(|&u| n >= u)
            .unwrap_or(1);
        // Plus float rounding of the printed decimal (a few bytes at PiB scale).
        let tol = unit_bytes / 20 + unit_bytes / 1_000_000 + 1;
        assert!(
            back.abs_diff(n) <= tol,
            "format_size({n}) = {shown:?} parses back to {back}"
        );
    }
);
