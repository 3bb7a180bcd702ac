//! Memory tier: the hottest blocks as shared buffers, least-recently-used first out,
//! bounded in bytes. A hit is a hash lookup and a reference-count increment.

use bytes::Bytes;
use lru::LruCache;

use super::BlockId;

pub struct MemoryTier {
    blocks: LruCache<BlockId, Bytes>,
    bytes: u64,
    bound: u64,
}

impl MemoryTier {
    pub fn new(bound: u64) -> Self {
        MemoryTier {
            blocks: LruCache::unbounded(),
            bytes: 0,
            bound,
        }
    }

    pub fn get(&mut self, id: &BlockId) -> Option<Bytes> {
        self.blocks.get(id).cloned()
    }

    /// Adds a block, dropping the least recently used ones past the bound. Returns how
    /// many were dropped. A block larger than the whole tier is not kept.
    pub fn insert(&mut self, id: BlockId, data: Bytes) -> u64 {
        if data.len() as u64 > self.bound {
            return 0;
        }
        self.bytes += data.len() as u64;
        if let Some(old) = self.blocks.put(id, data) {
            self.bytes -= old.len() as u64;
        }
        let mut evicted = 0;
        while self.bytes > self.bound {
            match self.blocks.pop_lru() {
                Some((_, old)) => {
                    self.bytes -= old.len() as u64;
                    evicted += 1;
                }
                None => break,
            }
        }
        evicted
    }

    /// Whether the tier holds a block, without counting as a use.
    pub fn contains(&self, id: &BlockId) -> bool {
        self.blocks.contains(id)
    }

    pub fn remove(&mut self, id: &BlockId) {
        if let Some(old) = self.blocks.pop(id) {
            self.bytes -= old.len() as u64;
        }
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::ObjectId;

    fn id(i: u32) -> BlockId {
        BlockId {
            object: ObjectId::new("k", "e"),
            index: i,
        }
    }

    #[test]
    fn bound_holds_and_least_recently_used_goes_first() {
        let mut tier = MemoryTier::new(300);
        tier.insert(id(0), Bytes::from(vec![0; 100]));
        tier.insert(id(1), Bytes::from(vec![1; 100]));
        tier.insert(id(2), Bytes::from(vec![2; 100]));
        assert!(tier.get(&id(0)).is_some()); // 0 is now the most recent
        assert_eq!(tier.insert(id(3), Bytes::from(vec![3; 100])), 1);
        assert!(tier.get(&id(1)).is_none());
        assert!(tier.get(&id(0)).is_some());
        assert_eq!(tier.bytes(), 300);
        // Too big for the tier: not kept, nothing evicted.
        assert_eq!(tier.insert(id(9), Bytes::from(vec![9; 301])), 0);
        assert!(tier.get(&id(9)).is_none());
        tier.remove(&id(0));
        assert_eq!(tier.bytes(), 200);
    }
}
