//! The ringfs POSIX file system through FUSE (in progress: see issue #3).
