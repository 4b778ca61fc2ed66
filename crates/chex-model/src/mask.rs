//! Where each row's tokens sit in a left-padded batch, and the attention masks that follow:
//! causal, sliding-window, padding, and Gemma 3's bidirectional attention inside an image block.

use std::ops::Range;

use burn::tensor::{Bool, Device, Tensor, TensorData};

/// One row of a left-padded batch.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RowLayout {
    /// Padding slots at the start of the row.
    pub padding: usize,
    /// Slot ranges holding image tokens; tokens in one block attend to each other both ways.
    pub image_blocks: Vec<Range<usize>>,
}

impl RowLayout {
    fn block_of(&self, slot: usize) -> Option<usize> {
        self.image_blocks.iter().position(|b| b.contains(&slot))
    }

    /// Position id of a slot: its index among the row's real tokens.
    pub fn position(&self, slot: usize) -> usize {
        slot.saturating_sub(self.padding)
    }
}

/// The layout of a whole batch.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BatchLayout {
    /// One entry per row.
    pub rows: Vec<RowLayout>,
}

impl BatchLayout {
    /// Rows with no padding and no images.
    pub fn plain(batch: usize) -> Self {
        Self {
            rows: vec![RowLayout::default(); batch],
        }
    }

    /// Position ids of slots `start..start+len` for every row, row-major.
    pub fn positions(&self, start: usize, len: usize) -> Vec<usize> {
        self.rows
            .iter()
            .flat_map(|row| (start..start + len).map(move |s| row.position(s)))
            .collect()
    }

    /// Mask `[batch, 1, q_len, k_end - k_start]`, true where attention is forbidden.
    ///
    /// Follows `transformers`: global layers allow `causal OR same-image-block`; sliding
    /// layers additionally require `q - k < window`; padding keys are always forbidden. A
    /// query whose every key is forbidden (a padding slot) may attend to itself, so that it
    /// produces finite values that later queries never read.
    pub fn mask(
        &self,
        queries: Range<usize>,
        keys: Range<usize>,
        window: Option<usize>,
        device: &Device,
    ) -> Tensor<4, Bool> {
        let (q_len, k_len) = (queries.len(), keys.len());
        let mut forbidden = Vec::with_capacity(self.rows.len() * q_len * k_len);
        for row in &self.rows {
            for q in queries.clone() {
                let q_block = row.block_of(q);
                let start = forbidden.len();
                for k in keys.clone() {
                    let causal = k <= q || (q_block.is_some() && q_block == row.block_of(k));
                    let in_window = window.is_none_or(|w| k + w > q);
                    forbidden.push(!(causal && in_window && k >= row.padding));
                }
                if forbidden[start..].iter().all(|f| *f) && keys.contains(&q) {
                    forbidden[start + (q - keys.start)] = false;
                }
            }
        }
        Tensor::from_data(
            TensorData::new(forbidden, [self.rows.len(), 1, q_len, k_len]),
            device,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(
        layout: &BatchLayout,
        q: Range<usize>,
        k: Range<usize>,
        w: Option<usize>,
    ) -> Vec<bool> {
        let device = Device::default();
        let m = layout.mask(q, k, w, &device);
        m.to_data()
            .try_to_vec::<bool>()
            .unwrap()
            .into_iter()
            .map(|f| !f)
            .collect()
    }

    #[test]
    fn image_block_is_bidirectional_and_padding_is_hidden() {
        let layout = BatchLayout {
            rows: vec![RowLayout {
                padding: 1,
                image_blocks: std::iter::once(2..4).collect(),
            }],
        };
        let a = allowed(&layout, 0..5, 0..5, None);
        let at = |q: usize, k: usize| a[q * 5 + k];
        assert!(at(2, 3), "image token sees the next image token");
        assert!(!at(1, 2), "text before the block stays causal");
        assert!(!at(3, 0) && !at(4, 0), "padding is never a key");
        assert!(at(0, 0), "a padding query attends to itself only");
        assert!(at(4, 1) && at(4, 4));
    }

    #[test]
    fn sliding_window_keeps_the_last_w_keys() {
        let layout = BatchLayout::plain(1);
        let a = allowed(&layout, 5..6, 0..6, Some(3));
        assert_eq!(a, vec![false, false, false, true, true, true]);
    }
}
