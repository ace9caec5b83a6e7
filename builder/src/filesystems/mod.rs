//! File systems written into partition images.

pub mod esp;
pub mod squashfs;
