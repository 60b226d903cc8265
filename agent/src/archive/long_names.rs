//! Names longer than a tar header holds: GNU long-name and long-link
//! members, and pax extended headers. The tar reader would read each whole
//! into memory before the member it describes, however large its header
//! says it is, so an upload could make the agent allocate gigabytes from a
//! few bytes of header. Archives are read raw instead and these members
//! are read here, each refused past [`MAX_METADATA_BYTES`].

use std::io::Read;

use tar::{Entry, EntryType, PaxExtensions};

use crate::api::invalid;
use crate::error::Result;

/// Largest long name, long link or pax header one member may carry: far
/// past any path a kernel accepts (4096 bytes) and pax headers with
/// extended attributes.
pub const MAX_METADATA_BYTES: u64 = 1 << 20;

/// What metadata members said about the member that follows them.
#[derive(Debug, Default)]
pub struct LongNames {
    gnu_name: Option<Vec<u8>>,
    gnu_link: Option<Vec<u8>>,
    pax: Option<Vec<u8>>,
}

impl LongNames {
    /// Takes in `entry` when it is a metadata member (it is then consumed
    /// and true is returned); false for any other member.
    pub fn absorb<R: Read>(&mut self, entry: &mut Entry<'_, R>) -> Result<bool> {
        let header = entry.header();
        if header.as_gnu().is_none() && header.as_ustar().is_none() {
            return Ok(false);
        }
        let kind = header.entry_type();
        let slot = match kind {
            EntryType::GNULongName => &mut self.gnu_name,
            EntryType::GNULongLink => &mut self.gnu_link,
            EntryType::XHeader => &mut self.pax,
            // Global pax headers apply to no member in particular; their
            // data is skipped unread.
            EntryType::XGlobalHeader => return Ok(true),
            _ => return Ok(false),
        };
        let size = header
            .entry_size()
            .map_err(|e| invalid("body", format!("not a tar stream: {e}")))?;
        if size > MAX_METADATA_BYTES {
            return Err(invalid(
                "body",
                format!(
                    "a {kind:?} member of the archive holds {size} bytes; at most {MAX_METADATA_BYTES} are accepted"
                ),
            ));
        }
        if slot.is_some() {
            return Err(invalid(
                "body",
                format!("two {kind:?} members of the archive describe the same member"),
            ));
        }
        let mut data = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        entry
            .read_to_end(&mut data)
            .map_err(|e| invalid("body", format!("not a tar stream: {e}")))?;
        *slot = Some(data);
        Ok(true)
    }

    /// The path and link target of `entry`, the member that follows the
    /// metadata taken in so far (which is then forgotten). A GNU long name
    /// comes first, then a pax header, then the header itself, as tar
    /// readers do.
    pub fn take<R: Read>(&mut self, entry: &Entry<'_, R>) -> (Vec<u8>, Option<Vec<u8>>) {
        let pax = self.pax.take();
        let from_pax = |key: &[u8]| {
            pax.as_deref().and_then(|p| {
                PaxExtensions::new(p)
                    .filter_map(|f| f.ok())
                    .find(|f| f.key_bytes() == key)
                    .map(|f| f.value_bytes().to_vec())
            })
        };
        let path = self
            .gnu_name
            .take()
            .map(without_nul)
            .or_else(|| from_pax(b"path"))
            .unwrap_or_else(|| entry.header().path_bytes().into_owned());
        let link = self
            .gnu_link
            .take()
            .map(without_nul)
            .or_else(|| from_pax(b"linkpath"))
            .or_else(|| entry.header().link_name_bytes().map(|l| l.into_owned()));
        (path, link)
    }

    /// Whether metadata was taken in with no member after it.
    pub fn is_pending(&self) -> bool {
        self.gnu_name.is_some() || self.gnu_link.is_some() || self.pax.is_some()
    }
}

/// GNU long names end with a NUL.
fn without_nul(mut name: Vec<u8>) -> Vec<u8> {
    if name.last() == Some(&0) {
        name.pop();
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(kind: EntryType, name: &str, size: u64) -> Vec<u8> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_path(name).unwrap();
        h.set_size(size);
        h.set_cksum();
        h.as_bytes().to_vec()
    }

    /// One pax record: its length in decimal counts itself.
    fn pax_record(key: &str, value: &str) -> String {
        let body = format!(" {key}={value}\n");
        let mut n = body.len() + 1;
        while format!("{n}{body}").len() != n {
            n += 1;
        }
        format!("{n}{body}")
    }

    #[test]
    fn a_huge_long_name_is_refused_from_its_header_alone() {
        // A header claiming 8 GiB of long name, and nothing after it: the
        // refusal must come before any of it is read.
        let stream = member(EntryType::GNULongName, "././@LongLink", 8 << 30);
        let mut archive = tar::Archive::new(&stream[..]);
        let mut entries = archive.entries().unwrap().raw(true);
        let mut entry = entries.next().unwrap().unwrap();
        let err = LongNames::default().absorb(&mut entry).unwrap_err();
        assert!(err.to_string().contains("8589934592 bytes"), "{err}");
        assert!(err.to_string().contains("at most 1048576"), "{err}");
    }

    #[test]
    fn long_names_and_pax_paths_name_the_next_member() {
        let long = format!("{}/file", "d".repeat(300));
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        b.append_data(&mut h, &long, &b"x"[..]).unwrap();
        let pax_name = format!("{}/from-pax", "p".repeat(300));
        let record = pax_record("path", &pax_name);
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(EntryType::XHeader);
        h.set_size(record.len() as u64);
        b.append_data(&mut h, "PaxHeaders/x", record.as_bytes())
            .unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_size(0);
        h.set_mode(0o644);
        b.append_data(&mut h, "short-header-name", &b""[..])
            .unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "short", format!("{}/target", "t".repeat(200)))
            .unwrap();
        let data = b.into_inner().unwrap();

        let mut names = LongNames::default();
        let mut seen = Vec::new();
        let mut archive = tar::Archive::new(&data[..]);
        for entry in archive.entries().unwrap().raw(true) {
            let mut entry = entry.unwrap();
            if names.absorb(&mut entry).unwrap() {
                continue;
            }
            let (path, link) = names.take(&entry);
            seen.push((
                String::from_utf8(path).unwrap(),
                link.map(|l| String::from_utf8(l).unwrap()),
            ));
        }
        assert!(!names.is_pending());
        assert_eq!(
            seen,
            [
                (long, None),
                (pax_name, None),
                (
                    "short".to_string(),
                    Some(format!("{}/target", "t".repeat(200)))
                )
            ]
        );
    }
}
