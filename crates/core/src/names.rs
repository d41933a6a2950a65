//! Validation of names that come from users: volume names and path components.

use crate::error::CoreError;

/// Longest file name component, as on Linux (NAME_MAX).
pub const MAX_NAME_LEN: usize = 255;
/// Longest volume name: a DNS-1123 label, so a volume name is also a valid Kubernetes name.
pub const MAX_VOLUME_NAME_LEN: usize = 63;

fn invalid(name: &str, reason: &str) -> CoreError {
    CoreError::InvalidName {
        name: name.chars().take(80).collect(),
        reason: reason.into(),
    }
}

/// A volume name is a DNS-1123 label: 1-63 characters of `a-z`, `0-9` and `-`, starting
/// and ending with an alphanumeric character.
pub fn validate_volume_name(name: &str) -> Result<(), CoreError> {
    if name.is_empty() {
        return Err(invalid(name, "volume names must not be empty"));
    }
    if name.len() > MAX_VOLUME_NAME_LEN {
        return Err(invalid(name, "volume names are at most 63 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(invalid(
            name,
            "volume names may contain only lowercase letters, digits and '-' (like a Kubernetes name)",
        ));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(invalid(
            name,
            "volume names must start and end with a letter or digit",
        ));
    }
    Ok(())
}

/// A single path component (a directory entry name).
pub fn validate_file_name(name: &[u8]) -> Result<(), CoreError> {
    let shown = String::from_utf8_lossy(name);
    if name.is_empty() {
        return Err(invalid(&shown, "file names must not be empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(invalid(
            &shown,
            "file names are at most 255 bytes (ENAMETOOLONG)",
        ));
    }
    if name == b"." || name == b".." {
        return Err(invalid(
            &shown,
            "'.' and '..' cannot be created, renamed or removed",
        ));
    }
    if name.contains(&b'/') || name.contains(&0) {
        return Err(invalid(&shown, "file names must not contain '/' or NUL"));
    }
    Ok(())
}

/// Splits an absolute or relative volume path (`/a/b/c`) into validated components.
/// `..` is refused rather than resolved: paths inside a volume can never escape it.
pub fn split_path(path: &str) -> Result<Vec<&str>, CoreError> {
    let mut out = Vec::new();
    for comp in path.split('/') {
        if comp.is_empty() || comp == "." {
            continue;
        }
        if comp == ".." {
            return Err(invalid(path, "'..' is not allowed in volume paths"));
        }
        validate_file_name(comp.as_bytes())?;
        out.push(comp);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_names() {
        for ok in ["a", "data", "pvc-0123-abc", &"x".repeat(63)] {
            assert!(validate_volume_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a_b",
            "a.b",
            "a/b",
            &"x".repeat(64),
            "é",
        ] {
            assert!(validate_volume_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn file_names() {
        assert!(validate_file_name(b"hello.txt").is_ok());
        assert!(validate_file_name("ünï cödé".as_bytes()).is_ok());
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0b", &[b'x'; 256]] {
            assert!(validate_file_name(bad).is_err());
        }
        assert!(validate_file_name(&[b'x'; 255]).is_ok());
    }

    #[test]
    fn paths() {
        assert_eq!(split_path("/a//b/./c/").ok(), Some(vec!["a", "b", "c"]));
        assert_eq!(split_path("/").ok(), Some(vec![]));
        assert!(split_path("/a/../b").is_err());
    }
}
