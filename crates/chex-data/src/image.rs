//! Decoding radiographs to the model's input: any PNG (8/16-bit) or JPEG, grey or colour, to a
//! square grey `f32` image, normalised; decoded in parallel and cached across epochs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use image::imageops::FilterType;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};

/// How images are prepared for the model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ImageSpec {
    /// Output side length in pixels (images are resized to `size × size`, as SigLIP's
    /// processor does, without keeping the aspect ratio).
    pub size: u32,
    /// Subtracted after scaling to [0, 1]; SigLIP uses 0.5.
    pub mean: f32,
    /// Divided by after subtracting the mean; SigLIP uses 0.5, giving [-1, 1].
    pub std: f32,
}

impl ImageSpec {
    /// SigLIP-style normalisation at the given size.
    pub fn siglip(size: u32) -> Self {
        Self {
            size,
            mean: 0.5,
            std: 0.5,
        }
    }
}

/// A decoded, resized, normalised grey image, row-major `size × size`.
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedImage {
    pub size: u32,
    pub pixels: Vec<f32>,
}

/// Decodes an image file to grey `[0, 1]` at its own resolution: `(width, height, pixels)`.
pub fn decode_grey(path: &Path) -> Result<(u32, u32, Vec<f32>)> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| DataError::io(path, e))?;
    let decoded = reader.decode().map_err(|e| DataError::Image {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let grey = decoded.to_luma32f();
    let (w, h) = grey.dimensions();
    if w == 0 || h == 0 {
        return Err(DataError::Image {
            path: path.to_path_buf(),
            message: "image has zero width or height".into(),
        });
    }
    Ok((w, h, grey.into_raw()))
}

/// Decodes, resizes and normalises one image.
pub fn prepare_image(path: &Path, spec: &ImageSpec) -> Result<PreparedImage> {
    if spec.size == 0 || spec.std <= 0.0 {
        return Err(DataError::Config(format!(
            "image spec needs size > 0 and std > 0, got {spec:?}"
        )));
    }
    let (w, h, pixels) = decode_grey(path)?;
    let buffer = image::ImageBuffer::<image::Luma<f32>, Vec<f32>>::from_raw(w, h, pixels)
        .ok_or_else(|| DataError::Image {
            path: path.to_path_buf(),
            message: "decoded buffer has the wrong length".into(),
        })?;
    let resized = if (w, h) == (spec.size, spec.size) {
        buffer
    } else {
        // Triangle widens its support with the scale factor, so large reductions
        // (2,500 → 64 px) average instead of aliasing.
        image::imageops::resize(&buffer, spec.size, spec.size, FilterType::Triangle)
    };
    let pixels = resized
        .into_raw()
        .into_iter()
        .map(|v| (v.clamp(0.0, 1.0) - spec.mean) / spec.std)
        .collect();
    Ok(PreparedImage {
        size: spec.size,
        pixels,
    })
}

/// Prepared images kept in memory, keyed by path, so that later epochs do not decode again.
#[derive(Debug)]
pub struct ImageCache {
    spec: ImageSpec,
    images: RwLock<HashMap<PathBuf, Arc<PreparedImage>>>,
}

impl ImageCache {
    /// An empty cache for one image spec.
    pub fn new(spec: ImageSpec) -> Self {
        Self {
            spec,
            images: RwLock::new(HashMap::new()),
        }
    }

    /// The spec images are prepared with.
    pub fn spec(&self) -> ImageSpec {
        self.spec
    }

    /// Number of cached images.
    pub fn len(&self) -> usize {
        self.images.read().map(|m| m.len()).unwrap_or(0)
    }

    /// True when nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One image, from the cache or decoded now.
    pub fn get(&self, path: &Path) -> Result<Arc<PreparedImage>> {
        if let Some(image) = self.images.read().ok().and_then(|m| m.get(path).cloned()) {
            return Ok(image);
        }
        let image = Arc::new(prepare_image(path, &self.spec)?);
        if let Ok(mut map) = self.images.write() {
            map.insert(path.to_path_buf(), image.clone());
        }
        Ok(image)
    }

    /// Many images, decoded in parallel; results keep the order of `paths`.
    pub fn get_many(&self, paths: &[PathBuf]) -> Vec<Result<Arc<PreparedImage>>> {
        paths.par_iter().map(|p| self.get(p)).collect()
    }
}
