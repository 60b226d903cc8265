//! A file being written inside a sandbox: a new file next to its
//! destination, renamed over it once complete, so a reader never sees half
//! of it and a refused upload leaves nothing behind.

use std::fs::File;
use std::os::fd::OwnedFd;

use fast_sandbox_api::files::FileInfo;
use rustix::fs::{AtFlags, Mode, fchmod, renameat, statat, unlinkat};
use rustix::io::Errno;

use super::{SandboxPath, chown, file_err, info};
use crate::error::{Error, Result};

/// A file being written; dropped without [`Upload::commit`] it is removed.
#[derive(Debug)]
pub struct Upload {
    pub(super) dir: OwnedFd,
    pub(super) tmp: String,
    pub(super) name: String,
    pub(super) path: SandboxPath,
    pub(super) file: Option<File>,
    pub(super) mode: u32,
    pub(super) owner: (u32, u32),
}

impl Upload {
    /// Appends bytes.
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        use std::io::Write;
        match self.file.as_mut() {
            Some(f) => f.write_all(data).map_err(|e| {
                Error::file(
                    "write",
                    &self.path.display,
                    Errno::from_io_error(&e).unwrap_or(Errno::IO),
                )
            }),
            None => Ok(()),
        }
    }

    /// Sets mode and owner, and renames the file over its destination.
    pub fn commit(mut self) -> Result<FileInfo> {
        let path = self.path.display.clone();
        if let Some(f) = self.file.take() {
            // chown clears setuid and setgid bits: mode after owner.
            chown(&f, self.owner).map_err(file_err("chown", &path))?;
            fchmod(&f, Mode::from_raw_mode(self.mode)).map_err(file_err("chmod", &path))?;
        }
        renameat(&self.dir, self.tmp.as_str(), &self.dir, self.name.as_str())
            .map_err(file_err("rename", &path))?;
        self.tmp.clear();
        let st = statat(&self.dir, self.name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(file_err("stat", &path))?;
        Ok(info(&self.dir, &self.name, &path, &st))
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if !self.tmp.is_empty() {
            let _ = unlinkat(&self.dir, self.tmp.as_str(), AtFlags::empty());
        }
    }
}
