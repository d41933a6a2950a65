//! Names from users and from CSI requests: volume names, path components, volume paths,
//! block ids in text, and the CSI driver's name → volume id mapping and page tokens.
//! Each validator is checked against a naive statement of its rule (a name it accepts
//! can never hold `/`, NUL, `.`/`..` or anything else the rule forbids, and a name the
//! rule allows is never refused).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringfs_core::names::{
    split_path, validate_file_name, validate_volume_name, MAX_NAME_LEN, MAX_VOLUME_NAME_LEN,
};
use ringfs_core::BlockId;
use ringfs_csi::names::{page_token, parse_page_token, volume_id_for};
use ringfs_fuzz::write_seeds;

fn volume_rule(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_VOLUME_NAME_LEN
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

fn file_rule(b: &[u8]) -> bool {
    !b.is_empty()
        && b.len() <= MAX_NAME_LEN
        && b != b"."
        && b != b".."
        && !b.contains(&b'/')
        && !b.contains(&0)
}

fn seeds() -> Vec<Vec<u8>> {
    [
        &b"pvc-0a1b2c3d-1111-2222-3333-444455556666"[..],
        b"/a//b/./c/",
        b"/a/../b",
        b"after:vol-1",
        b"0123456789abcdef0011223344556677",
        b"Sanity-Volume_\xc3\xa9",
        b"a\0b",
    ]
    .iter()
    .map(|s| s.to_vec())
    .collect()
}

fuzz_target!(
    init: {
        write_seeds("names", seeds);
    },
    |data: &[u8]| {
        assert_eq!(validate_file_name(data).is_ok(), file_rule(data), "file name {data:?}");
        let Ok(s) = std::str::from_utf8(data) else {
            return;
        };

        assert_eq!(validate_volume_name(s).is_ok(), volume_rule(s), "volume name {s:?}");

        // A volume path: components are valid names, never `..`; `.` and empty ones drop.
        let comps: Vec<&str> = s.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
        match split_path(s) {
            Ok(got) => {
                assert_eq!(got, comps, "path {s:?}");
                assert!(got.iter().all(|c| file_rule(c.as_bytes())), "path {s:?}");
                assert_eq!(split_path(&got.join("/")).ok(), Some(got.clone()));
            }
            Err(_) => assert!(
                comps.iter().any(|c| !file_rule(c.as_bytes())),
                "path {s:?} refused although every component is valid"
            ),
        }

        // Block ids in text (CLI, admin API): exactly 32 hex digits, printed back lowercase.
        match s.parse::<BlockId>() {
            Ok(id) => assert_eq!(id.to_string(), s.to_ascii_lowercase()),
            Err(_) => assert!(s.len() != 32 || !s.bytes().all(|c| c.is_ascii_hexdigit())),
        }

        // CSI: every CSI name maps to a valid, stable volume id; valid names map to
        // themselves.
        let id = volume_id_for(s);
        assert!(volume_rule(&id), "CSI name {s:?} mapped to invalid id {id:?}");
        assert_eq!(volume_id_for(s), id);
        if volume_rule(s) {
            assert_eq!(id, s);
        }
        // Page tokens: ours round-trip, anything else is refused, never misread.
        match parse_page_token(s) {
            Ok(Some(after)) => {
                assert!(volume_rule(&after));
                assert_eq!(page_token(&after), s);
            }
            Ok(None) => assert!(s.is_empty()),
            Err(_) => {}
        }
        assert_eq!(parse_page_token(&page_token(&id)).ok(), Some(Some(id.clone())));
    }
);
