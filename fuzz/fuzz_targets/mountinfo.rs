//! The kernel mount table as the CSI node plugin reads it (`/proc/self/mountinfo`):
//! paths in it are chosen by users (pod volume paths, FUSE sources), octal-escaped by
//! the kernel. Contracts checked: parsing never panics; a line written in the kernel's
//! format with escaped fields parses back to exactly those fields; ringfs mounts are
//! recognized by their source whatever the path.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringfs_csi::mounts::{mount_at, parse_mountinfo, RINGFS_FSTYPE};
use ringfs_fuzz::write_seeds;

/// Escapes a field the way the kernel does (space, tab, newline, backslash as `\ooo`).
fn escape(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            ' ' | '\t' | '\n' | '\\' => format!("\\{:03o}", c as u32),
            c => c.to_string(),
        })
        .collect()
}

fn seeds() -> Vec<Vec<u8>> {
    vec![
        b"36 35 98:0 /mnt1 /mnt/parent\\040dir rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n\
          40 36 0:52 / /var/lib/kubelet/pods/x/volumes/csi/pv rw,nosuid - fuse.ringfs ringfs:vol rw,user_id=0\n"
            .to_vec(),
        [&[0u8][..], b"/var/lib/kubelet/pods/a b\\c/mount\0vol-1"].concat(),
    ]
}

fuzz_target!(
    init: {
        write_seeds("mountinfo", seeds);
    },
    |data: &[u8]| {
        // Free text, as read from the file.
        let text = String::from_utf8_lossy(data);
        let entries = parse_mountinfo(&text);
        assert!(entries.len() <= text.lines().count());
        for e in &entries {
            let _ = e.ringfs_volume();
            let _ = e.read_only();
            let _ = mount_at(&entries, &e.mount_point);
        }

        // A line we write from a path and a volume name (separated by NUL).
        let Some((&0, rest)) = data.split_first() else {
            return;
        };
        let rest = String::from_utf8_lossy(rest);
        let (path, vol) = rest.split_once('\0').unwrap_or((&rest, "v"));
        if vol.is_empty() || path.contains('\0') || vol.contains('\0') {
            return;
        }
        // The kernel prints mount points as absolute paths.
        let path = format!("/{path}");
        let path = path.as_str();
        let line = format!(
            "40 36 0:52 / {} rw,nosuid shared:9 - {RINGFS_FSTYPE} {} rw,user_id=0",
            escape(path),
            escape(&format!("ringfs:{vol}"))
        );
        let parsed = parse_mountinfo(&line);
        assert_eq!(parsed.len(), 1, "{line:?}");
        let e = &parsed[0];
        assert_eq!(e.mount_point.to_string_lossy(), path, "{line:?}");
        assert_eq!(e.ringfs_volume(), Some(vol), "{line:?}");
        assert!(!e.read_only());
    }
);
