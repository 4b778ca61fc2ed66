//! Turning prepared images into the model's pixel tensor.

use chex_data::image::PreparedImage;
use chex_model::burn::tensor::{Device, Tensor, TensorData};

/// `[images, 3, side, side]`: each grey image repeated over the three channels SigLIP expects.
pub fn pixel_batch(images: &[&PreparedImage], device: &Device) -> Tensor<4> {
    let side = images.first().map(|i| i.size as usize).unwrap_or(0);
    let mut values = Vec::with_capacity(images.len() * 3 * side * side);
    for image in images {
        for _ in 0..3 {
            values.extend_from_slice(&image.pixels);
        }
    }
    Tensor::from_data(
        TensorData::new(values, [images.len(), 3, side, side]),
        device,
    )
}
