//! Rotary position embeddings with Gemma 3's two bases (local layers 10k, global layers 1M
//! with linear scaling), computed in f32 exactly as `transformers` does.

use burn::tensor::{Device, Tensor, TensorData};

use crate::config::RopeParameters;

/// Cosine and sine tables `[max_positions, head_dim]` for one rotary setting, kept on the host
/// so that any device can look rows up without a gather kernel.
#[derive(Debug, Clone)]
pub struct RotaryTable {
    cos: Vec<f32>,
    sin: Vec<f32>,
    head_dim: usize,
    max_positions: usize,
}

impl RotaryTable {
    /// Tables for positions `0..max_positions`.
    pub fn new(params: &RopeParameters, head_dim: usize, max_positions: usize) -> Self {
        let factor = if params.rope_type == "linear" {
            params.factor.unwrap_or(1.0) as f32
        } else {
            1.0
        };
        let half = head_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| {
                let exponent = (2 * i) as f32 / head_dim as f32;
                1.0 / (params.rope_theta as f32).powf(exponent) / factor
            })
            .collect();
        let mut cos = Vec::with_capacity(max_positions * head_dim);
        let mut sin = Vec::with_capacity(max_positions * head_dim);
        for position in 0..max_positions {
            for _ in 0..2 {
                for f in &inv_freq {
                    let angle = position as f32 * f;
                    cos.push(angle.cos());
                    sin.push(angle.sin());
                }
            }
        }
        Self {
            cos,
            sin,
            head_dim,
            max_positions,
        }
    }

    /// Longest position the table covers.
    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// Cos and sin for row-major `positions` of a `[batch, len]` block, shaped
    /// `[batch, 1, len, head_dim]`. Positions past the table are clamped to its last row.
    pub fn lookup(
        &self,
        positions: &[usize],
        batch: usize,
        len: usize,
        device: &Device,
    ) -> (Tensor<4>, Tensor<4>) {
        let d = self.head_dim;
        let mut cos = Vec::with_capacity(positions.len() * d);
        let mut sin = Vec::with_capacity(positions.len() * d);
        for &p in positions {
            let p = p.min(self.max_positions - 1);
            cos.extend_from_slice(&self.cos[p * d..(p + 1) * d]);
            sin.extend_from_slice(&self.sin[p * d..(p + 1) * d]);
        }
        let shape = [batch, 1, len, d];
        (
            Tensor::from_data(TensorData::new(cos, shape), device),
            Tensor::from_data(TensorData::new(sin, shape), device),
        )
    }
}

/// Rotate `x` `[batch, heads, len, head_dim]` by the looked-up angles.
pub fn apply_rotary(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
    let [b, h, l, d] = x.dims();
    let half = d / 2;
    let x1 = x.clone().slice([0..b, 0..h, 0..l, 0..half]);
    let x2 = x.clone().slice([0..b, 0..h, 0..l, half..d]);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    x * cos.clone() + rotated * sin.clone()
}
