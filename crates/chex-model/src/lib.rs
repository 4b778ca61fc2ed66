//! The chex-grpo model crate. It holds the choice of burn backend at run time (this file's
//! [`select_device`]); the SigLIP-style vision encoder and Gemma-3-style decoder land here
//! with their own modules (`config`, `vision`, `text`, `cache`, `sampling`, `tokenizer`).
//!
//! ```
//! let device = chex_model::select_device("cpu")?;
//! let x = burn::tensor::Tensor::<1>::from_floats([1.0, 2.0], &device);
//! assert_eq!(x.dims(), [2]);
//! # Ok::<(), chex_model::ModelError>(())
//! ```

pub mod device;
pub mod error;

pub use burn;
pub use device::{DeviceChoice, compiled_backends, select_device};
pub use error::ModelError;
