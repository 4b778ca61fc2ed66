//! Turning prepared images into the model's pixel tensor.

use chex_data::image::PreparedImage;
use chex_model::burn::tensor::{Device, Tensor, TensorData};

/// `[images, 3, side, side]` values: each grey image repeated over the three channels SigLIP
/// expects.
pub fn pixel_data(images: &[&PreparedImage]) -> TensorData {
    let side = images.first().map(|i| i.size as usize).unwrap_or(0);
    let mut values = Vec::with_capacity(images.len() * 3 * side * side);
    for image in images {
        for _ in 0..3 {
            values.extend_from_slice(&image.pixels);
        }
    }
    TensorData::new(values, [images.len(), 3, side, side])
}

/// [`pixel_data`] as a tensor on `device`.
pub fn pixel_batch(images: &[&PreparedImage], device: &Device) -> Tensor<4> {
    Tensor::from_data(pixel_data(images), device)
}
