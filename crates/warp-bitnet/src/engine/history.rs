//! Each slot's repetition history on the host: a bitmap of the token ids appended to the slot
//! since its reset (the GPU engine keeps the same bitmaps on the device).

/// `[slots, words]` bitmaps; bit `t % 32` of word `t / 32` of a slot is set once token `t` was
/// appended to it.
pub(crate) struct SlotHistory {
    words: usize,
    bits: Vec<u32>,
}

impl SlotHistory {
    pub fn new(slots: usize, vocab: usize) -> Self {
        let words = vocab.div_ceil(32);
        Self {
            words,
            bits: vec![0; slots * words],
        }
    }

    /// Marks `tokens` (ids below the vocabulary: the engine's plan checked them) in `slot`.
    pub fn mark(&mut self, slot: usize, tokens: &[u32]) {
        let row = &mut self.bits[slot * self.words..(slot + 1) * self.words];
        for &t in tokens {
            row[t as usize / 32] |= 1 << (t % 32);
        }
    }

    pub fn clear(&mut self, slot: usize) {
        if let Some(row) = self
            .bits
            .get_mut(slot * self.words..(slot + 1) * self.words)
        {
            row.fill(0);
        }
    }

    pub fn slot(&self, slot: usize) -> &[u32] {
        &self.bits[slot * self.words..(slot + 1) * self.words]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_and_clears_per_slot() {
        let mut h = SlotHistory::new(3, 70);
        h.mark(1, &[0, 69, 33, 33]);
        assert_eq!(h.slot(1), [1, 2, 1 << 5]);
        assert_eq!(h.slot(0), [0, 0, 0]);
        h.clear(1);
        h.clear(7); // not a slot: nothing to clear
        assert_eq!(h.slot(1), [0, 0, 0]);
    }
}
