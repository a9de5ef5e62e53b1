//! iSCSI exports through LIO (the kernel target), configured through configfs.
/// The configfs tree model and its text dump.
pub mod configfs;
