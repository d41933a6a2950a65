//! CSI names → ringfs volume and snapshot names, and List{Volumes,Snapshots} page tokens.

use crate::error::{CsiError, Result};
use ringfs_core::names::validate_volume_name;

/// Longest ringfs volume name (a DNS-1123 label).
const MAX_NAME: usize = 63;

/// 64-bit FNV-1a: stable across releases and platforms, which the id derivation needs
/// (the same CSI name must map to the same volume forever).
fn fnv1a(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The ringfs volume name (= CSI volume id) for a CSI volume name; snapshot names map
/// the same way (ringfs snapshot name = CSI snapshot id). Kubernetes names
/// (`pvc-<uuid>`) are valid volume names and are used unchanged; any other name is
/// lowercased, stripped of characters a volume name cannot hold, shortened, and suffixed
/// with a hash of the original, so distinct CSI names never share a volume.
pub fn volume_id_for(csi_name: &str) -> String {
    if validate_volume_name(csi_name).is_ok() {
        return csi_name.to_string();
    }
    let mut base: String = csi_name
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    let suffix = format!("-{:016x}", fnv1a(csi_name));
    base.truncate(MAX_NAME - suffix.len());
    let base = base.trim_matches('-');
    let base = if base.is_empty() { "v" } else { base };
    format!("{base}{suffix}")
}

const TOKEN_PREFIX: &str = "after:";

/// A page token: the last volume (or snapshot) id of the previous page. Both are listed
/// in name order, so a token stays meaningful when entries come and go between pages.
pub fn page_token(last: &str) -> String {
    format!("{TOKEN_PREFIX}{last}")
}

/// Decodes a page token; anything we did not issue is `ABORTED`, as the spec requires.
pub fn parse_page_token(token: &str) -> Result<Option<String>> {
    if token.is_empty() {
        return Ok(None);
    }
    match token.strip_prefix(TOKEN_PREFIX) {
        Some(name) if validate_volume_name(name).is_ok() => Ok(Some(name.to_string())),
        _ => Err(CsiError::Aborted(format!(
            "starting_token {token:?} was not issued by this driver; restart the listing \
             without a token"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_names_are_kept() {
        let n = "pvc-0a1b2c3d-1111-2222-3333-444455556666";
        assert_eq!(volume_id_for(n), n);
    }

    #[test]
    fn other_names_become_valid_distinct_and_stable() {
        let names = [
            "sanity-Controller-ABC",
            "sanity-controller-abc",
            "UPPER",
            "a_b",
            "a.b",
            &"x".repeat(128),
            &"y".repeat(64),
            "-",
            "",
        ];
        let ids: Vec<String> = names.iter().map(|n| volume_id_for(n)).collect();
        for (n, id) in names.iter().zip(&ids) {
            assert!(validate_volume_name(id).is_ok(), "{n:?} -> {id:?} invalid");
            assert_eq!(&volume_id_for(n), id, "not deterministic");
        }
        let mut uniq = ids.clone();
        uniq.sort();
        uniq.dedup();
        assert_eq!(uniq.len(), ids.len(), "collision in {ids:?}");
    }

    #[test]
    fn tokens_round_trip_and_foreign_tokens_abort() {
        assert_eq!(parse_page_token("").unwrap(), None);
        assert_eq!(
            parse_page_token(&page_token("vol-1")).unwrap(),
            Some("vol-1".into())
        );
        for bad in ["garbage", "after:", "after:UPPER", "10"] {
            assert!(matches!(parse_page_token(bad), Err(CsiError::Aborted(_))));
        }
    }
}
