//! Volume capability checks shared by the controller and node services.

use crate::error::{CsiError, Result};
use ringfs_proto::csi::volume_capability::access_mode::Mode;
use ringfs_proto::csi::volume_capability::AccessType;
use ringfs_proto::csi::VolumeCapability;

/// Why ringfs cannot serve `cap`, or `None` when it can. ringfs volumes are shared file
/// systems, so every access mode works; raw block devices do not exist.
pub fn unsupported(cap: &VolumeCapability) -> Option<String> {
    match &cap.access_type {
        None => return Some("volume capability has no access type; set `mount`".into()),
        Some(AccessType::Block(_)) => {
            return Some(
                "block access type is not supported: ringfs volumes are file systems; \
                 request a filesystem (mount) volume"
                    .into(),
            )
        }
        Some(AccessType::Mount(_)) => {}
    }
    let mode = cap.access_mode.as_ref().map(|m| m.mode).unwrap_or(0);
    match Mode::try_from(mode) {
        Ok(Mode::Unknown) | Err(_) => Some(format!(
            "volume capability has no supported access mode (got {mode}); set access_mode"
        )),
        Ok(_) => None,
    }
}

/// Checks a list of capabilities as `INVALID_ARGUMENT` errors.
pub fn require_all(caps: &[VolumeCapability]) -> Result<()> {
    if caps.is_empty() {
        return Err(CsiError::InvalidArgument(
            "volume_capabilities is required (at least one)".into(),
        ));
    }
    for c in caps {
        if let Some(why) = unsupported(c) {
            return Err(CsiError::InvalidArgument(why));
        }
    }
    Ok(())
}

/// Checks one required capability.
pub fn require_one(cap: Option<&VolumeCapability>) -> Result<&VolumeCapability> {
    let cap =
        cap.ok_or_else(|| CsiError::InvalidArgument("volume_capability is required".into()))?;
    if let Some(why) = unsupported(cap) {
        return Err(CsiError::InvalidArgument(why));
    }
    Ok(cap)
}

/// True for the access modes that never write.
pub fn is_read_only_mode(cap: &VolumeCapability) -> bool {
    let mode = cap.access_mode.as_ref().map(|m| m.mode).unwrap_or(0);
    matches!(
        Mode::try_from(mode),
        Ok(Mode::SingleNodeReaderOnly | Mode::MultiNodeReaderOnly)
    )
}
