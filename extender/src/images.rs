//! Image names interned to small integers, so a node's image list is a
//! sorted `Vec<ImageId>` and scoring thousands of nodes is a merge of
//! integer lists, not string hashing.

use std::collections::HashMap;

use fast_sandbox_api::image::normalize;

/// A normalised image reference, interned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageId(pub u32);

/// The interning table and the best known size of each image.
#[derive(Debug, Default)]
pub struct ImageTable {
    ids: HashMap<String, ImageId>,
    sizes: Vec<u64>,
}

impl ImageTable {
    /// The id of `reference` (normalised here), adding it when new; records
    /// `size` when it is larger than what is known.
    pub fn intern(&mut self, reference: &str, size: u64) -> ImageId {
        let name = normalize(reference);
        let id = match self.ids.get(&name) {
            Some(id) => *id,
            None => {
                let id = ImageId(self.sizes.len() as u32);
                self.ids.insert(name, id);
                self.sizes.push(0);
                id
            }
        };
        let known = &mut self.sizes[id.0 as usize];
        *known = (*known).max(size);
        id
    }

    /// The id of an already normalised name, if any node ever held it.
    pub fn lookup(&self, normalized: &str) -> Option<ImageId> {
        self.ids.get(normalized).copied()
    }

    /// Largest size seen for `id` (0 if unknown).
    pub fn size(&self, id: ImageId) -> u64 {
        self.sizes.get(id.0 as usize).copied().unwrap_or(0)
    }

    /// How many names are interned.
    pub fn len(&self) -> usize {
        self.sizes.len()
    }

    /// Whether nothing is interned.
    pub fn is_empty(&self) -> bool {
        self.sizes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalised_and_sizes_keep_the_maximum() {
        let mut t = ImageTable::default();
        let a = t.intern("busybox", 10);
        let b = t.intern("docker.io/library/busybox:latest", 5);
        assert_eq!(a, b);
        assert_eq!(t.size(a), 10);
        assert_eq!(t.lookup("docker.io/library/busybox:latest"), Some(a));
        assert_eq!(t.lookup("busybox"), None, "lookup takes normalised names");
        assert_ne!(t.intern("alpine", 1), a);
        assert_eq!(t.len(), 2);
    }
}
