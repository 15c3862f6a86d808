//! tshs keeps the data of TeamDrive-style spaces in a cluster of MySQL
//! databases and shows it through FUSE as a POSIX tree
//! `/spacedata/<volume>/<space>/…`.
//!
//! The Admin Node ([`cluster`]) knows the Storage Nodes, volumes and spaces;
//! [`placement`] maps a space to the node that owns it; each Storage Node
//! ([`shard`]) holds every row of its spaces, so an operation inside a space
//! is one transaction; [`fs`] gives those rows POSIX semantics and [`fuse`]
//! is the thin kernel adapter. [`cli`] is the `tshs` command over the same core;
//! [`space_server`] serves the mounted tree over HTTP as plain files.

pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod db;
pub mod disk_tier;
pub mod fs;
pub mod fuse;
pub mod import;
pub mod logging;
pub mod metrics;
pub mod mount;
pub mod object_store;
pub mod placement;
pub mod protocol;
pub mod shard;
pub mod space_server;
pub mod tasks;
